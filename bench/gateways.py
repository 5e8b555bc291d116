"""`make bench`: this proxy beside direct-to-upstream and LiteLLM, measured in one run.

Each gateway runs alone on CPU 1; the fake OpenAI upstream and the load generators share
CPU 0 (`taskset`), so the gateway's own cost is what differs between the columns. Full
accounting is on: every request the proxy relays is reserved, metered and recorded, and each
proxy scenario ends by checking that the records written equal the requests it relayed.

Scenarios (each on direct, this proxy, LiteLLM 1 worker in its no-database setup):
  - one request at a time, a 20-token chat completion: latency p50 / p99 (wrk --latency);
    "added" is the gateway's minus direct's;
  - 32 in flight: requests per second and the error rate (wrk);
  - the proxy both on SQLite (the default; a key without limits) and on PostgreSQL + Redis
    (a key with a budget and rate limits);
  - 1,000 and 2,000 concurrent 20-chunk streams over 10 s: time to first token, errors,
    the gateway's CPU per stream and its memory per open stream (bench/streams.py).

    .venv/bin/python bench/gateways.py [--seconds 10] [--skip-litellm] [--skip-postgres]
        [--streams 1000,2000] [--database-url postgres://...] [--cache-url redis://...]

Results are printed and written to bench/results/ (machine, date, command, figures, targets).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shlex
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import streams  # noqa: E402 (bench/streams.py)

from relay.management.commands.serve import uvicorn_command  # noqa: E402
from tests.servers import _stop, _wait_http, free_port, scratch_env  # noqa: E402

UPSTREAM_KEY = "sk-bench-upstream"
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"max_tokens":20}'
RESULTS = ROOT / "bench" / "results"
LOAD_CPU, GATEWAY_CPU = "0", "1"
TARGETS = {
    "rps_ratio": 15.0,  # x LiteLLM at 32 in flight, both backends
    "added_p50_ms": 1.5,
    "added_p99_ms": 5.0,
    "stream_kib": 80.0,
    "stream_cpu_ms": 3.0,
    "ttft_p99_over_direct_ms": 50.0,
}


def _litellm():
    spec = importlib.util.spec_from_file_location(
        "litellm_bench", ROOT / "bench/litellm/litellm.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pinned(cpu: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command]


# -- wrk ----------------------------------------------------------------------------------------

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
"""


@dataclasses.dataclass
class WrkRun:
    requests: int
    seconds: float
    rps: float
    errors: int  # non-2xx answers and socket errors
    p50_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / max(1, self.requests)


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3.6e6}[unit]


def wrk(url: str, key: str, *, connections: int, seconds: int) -> WrkRun:
    script = RESULTS / ".post.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(_WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": BODY, "BENCH_KEY": key}
    out = subprocess.run(
        pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "--timeout", "30s", "-s", str(script), url]),
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if not re.search(r"^\s+99%\s+\S+\s*$", out, re.M):
        raise RuntimeError(f"wrk gave no latency distribution for {url}:\n{out}")
    done = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    seconds_taken = _ms(done.group(2) + done.group(3)) / 1000
    return WrkRun(
        requests=int(done.group(1)),
        seconds=seconds_taken,
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        errors=errors,
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)\s*$", out, re.M).group(1)),
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)\s*$", out, re.M).group(1)),
    )


# -- the servers --------------------------------------------------------------------------------


def _manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
        capture_output=True, text=True,
    ).stdout  # fmt: skip


def _post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).read()


def _get_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


class Fake:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            pinned(LOAD_CPU, [sys.executable, "manage.py", "fake_openai", "--port",
                              str(self.port), "--key", UPSTREAM_KEY]),
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.origin = f"http://127.0.0.1:{self.port}"
        _wait_http(f"{self.origin}/_fake/stats", self.proc)

    @property
    def v1(self) -> str:
        return f"{self.origin}/v1"

    def reset(self) -> None:
        _post(f"{self.origin}/_fake/reset")

    def requests(self) -> int:
        return _get_json(f"{self.origin}/_fake/stats")["requests"]


class Proxy:
    """This proxy on a scratch database, served as `manage.py serve` serves it."""

    def __init__(self, name: str, env: dict[str, str], fake: Fake, *key_args: str) -> None:
        self.name = name
        self.env = {**env, "OPENAI_BASE_URL": fake.v1}
        self.database_url = env["DATABASE_URL"]
        _manage(self.env, "migrate", "--noinput", "-v", "0")
        _manage(self.env, "load_prices")
        self.key = _manage(self.env, "create_api_key", "bench", *key_args).strip().splitlines()[-1]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proxy:
        self.port = free_port()
        self.proc = subprocess.Popen(
            pinned(GATEWAY_CPU, uvicorn_command(host="127.0.0.1", port=self.port)),
            cwd=ROOT, env=self.env,
        )  # fmt: skip
        _wait_http(f"http://127.0.0.1:{self.port}/healthz", self.proc)
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        return self

    def records(self) -> tuple[int, int, int, int, int]:
        """(records, pending, relayed upstream, left unsent by a client that hung up, refused
        by the proxy) once the writer has caught up: a record with an upstream request id was
        relayed; one without is a client that left before it was sent (wrk cuts its
        connections at the end) or a request the proxy answered itself (a 503, say)."""
        last, stable_since = None, time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = self._count()
            if now != last:
                last, stable_since = now, time.monotonic()
            elif now[1] == 0 and time.monotonic() - stable_since > 1.0:
                return now
            time.sleep(0.2)
        return last

    def _count(self) -> tuple[int, int, int, int, int]:
        sql = (
            "SELECT count(*), coalesce(sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN upstream_request_id <> '' THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN upstream_request_id = '' AND status_code = 499"
            " AND error_code = 'client_disconnected' THEN 1 ELSE 0 END), 0),"
            " coalesce(sum(CASE WHEN upstream_request_id = '' AND status_code <> 499"
            " THEN 1 ELSE 0 END), 0)"
            " FROM usage_usagerecord"
        )
        if self.database_url.startswith("sqlite"):
            with sqlite3.connect(self.database_url.removeprefix("sqlite:///")) as db:
                return tuple(db.execute(sql).fetchone())
        import psycopg2

        with psycopg2.connect(self.database_url) as db, db.cursor() as cursor:
            cursor.execute(sql)
            return tuple(int(v) for v in cursor.fetchone())

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


class Books:
    """Records written against requests made, scenario by scenario: every request the proxy
    relayed has its record (the fake upstream counts what it served, on its own), every other
    record is a client that hung up before its request was sent, and none is left pending."""

    def __init__(self, proxy: Proxy, fake: Fake) -> None:
        self.proxy, self.fake = proxy, fake
        self.before = proxy.records()
        fake.reset()

    def check(self, results: dict, scenario: str) -> None:
        records, pending, relayed, unsent, refused = (
            now - then for now, then in zip(self.proxy.records(), self.before, strict=True)
        )
        served = self.fake.requests()
        ok = relayed == served and records == relayed + unsent + refused and pending == 0
        results.setdefault("records", {})[scenario] = {
            "records": records, "pending": pending, "relayed": served,
            "unsent_client_left": unsent, "refused_by_proxy": refused, "ok": ok,
        }  # fmt: skip
        print(
            f"  {scenario:24} {records:,} records: {relayed:,} relayed (upstream served {served:,}),"
            f" {unsent} unsent (client left), {refused} answered by the proxy, {pending} pending:"
            f" {'OK' if ok else 'RECORDS LOST OR EXTRA'}",
            flush=True,
        )


class LiteLLM:
    def __init__(self, fake: Fake) -> None:
        self.ll = _litellm()
        self.ll.ensure_installed()
        self.fake = fake
        self.key = self.ll.MASTER_KEY
        self.proc: subprocess.Popen | None = None

    def start(self) -> LiteLLM:
        self.port = free_port()
        self.proc = subprocess.Popen(
            pinned(GATEWAY_CPU, self.ll.command(self.port)),
            env=self.ll.environment(self.fake.v1, UPSTREAM_KEY), cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        _wait_http(f"http://127.0.0.1:{self.port}/health/liveliness", self.proc, timeout=180)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


# -- the scenarios ------------------------------------------------------------------------------


def _warm(url: str, key: str) -> None:
    # One call first, waited for: a process loads its tokenizer on the first call that needs
    # it (seconds of CPU), which must not land in a measured run.
    request = urllib.request.Request(
        url, data=BODY.encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=300).read()
    wrk(url, key, connections=4, seconds=5)


def request_scenarios(name: str, url: str, key: str, seconds: int, results: dict) -> None:
    _warm(url, key)
    one = wrk(url, key, connections=1, seconds=seconds)
    many = wrk(url, key, connections=32, seconds=seconds)
    results[name] = {
        "one_at_a_time": dataclasses.asdict(one),
        "in_flight_32": dataclasses.asdict(many),
    }
    print(
        f"  {name:24} one at a time p50 {one.p50_ms:7.3f} ms  p99 {one.p99_ms:7.3f} ms | "
        f"32 in flight {many.rps:8,.0f} req/s, errors {many.errors}/{many.requests}",
        flush=True,
    )


def stream_scenarios(
    name: str, url: str, key: str, pid: int | None, counts: list[int], results: dict
) -> None:
    for n in counts:
        run = uvloop.run(streams.held_streams(url, key, n, chunks=20, chunk_delay_ms=500, pid=pid))
        row = {
            "streams": n,
            "completed": run.completed,
            "errors": run.errors,
            "error_kinds": run.error_kinds,
            "ttft_p50_ms": streams.pct(run.ttft_ms, 0.5) if run.ttft_ms else None,
            "ttft_p99_ms": streams.pct(run.ttft_ms, 0.99) if run.ttft_ms else None,
            "duration_s": run.duration_s,
            "cpu_ms_per_stream": run.cpu_s * 1000 / n if run.cpu_s is not None else None,
            "kib_per_open_stream": (run.rss_all_open_kib - run.rss_idle_kib) / n
            if run.rss_all_open_kib is not None
            else None,
        }
        results.setdefault(name, {})[f"streams_{n}"] = row
        cpu = (
            f"{row['cpu_ms_per_stream']:.2f} ms CPU" if row["cpu_ms_per_stream"] is not None else ""
        )
        mem = (
            f"{row['kib_per_open_stream']:.1f} KiB"
            if row["kib_per_open_stream"] is not None
            else ""
        )
        print(
            f"  {name:24} {n:5} streams: {run.completed} done, {run.errors} failed {run.error_kinds or ''}, "
            f"TTFT p50 {row['ttft_p50_ms'] or 0:,.0f} ms p99 {row['ttft_p99_ms'] or 0:,.0f} ms, "
            f"{cpu} and {mem} per stream",
            flush=True,
        )


def _unreachable(database_url: str, cache_url: str) -> str:
    """Why the PostgreSQL + Redis scenario cannot run here ('' if it can)."""
    try:
        import psycopg2

        base = database_url.rpartition("/")[0]
        psycopg2.connect(f"{base}/postgres", connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL at {database_url.rpartition('@')[2]} does not answer ({type(exc).__name__})"
    try:
        import redis

        redis.Redis.from_url(cache_url, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        return f"Redis at {cache_url} does not answer ({type(exc).__name__})"
    return ""


def _fresh_postgres(url: str) -> str:
    import psycopg2

    base, _, name = url.rpartition("/")
    admin = psycopg2.connect(f"{base}/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return url


def _flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def machine() -> dict:
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def verdicts(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(what, figure, target, met) for each target of the issue."""
    out = []
    lite = results.get("litellm")
    direct = results["direct"]
    for name in ("proxy-sqlite", "proxy-postgres"):
        row = results.get(name)
        if row is None:
            continue
        if lite:
            ratio = row["in_flight_32"]["rps"] / lite["in_flight_32"]["rps"]
            out.append(
                (
                    f"{name} req/s at 32 in flight ÷ LiteLLM",
                    f"{ratio:.1f}×",
                    "≥ 15×",
                    ratio >= TARGETS["rps_ratio"],
                )
            )
        p50 = row["one_at_a_time"]["p50_ms"] - direct["one_at_a_time"]["p50_ms"]
        p99 = row["one_at_a_time"]["p99_ms"] - direct["one_at_a_time"]["p99_ms"]
        out.append(
            (
                f"{name} added latency p50",
                f"{p50:.2f} ms",
                "≤ 1.5 ms",
                p50 <= TARGETS["added_p50_ms"],
            )
        )
        out.append(
            (f"{name} added latency p99", f"{p99:.2f} ms", "≤ 5 ms", p99 <= TARGETS["added_p99_ms"])
        )
        errors = row["in_flight_32"]["errors"] / max(1, row["in_flight_32"]["requests"])
        out.append((f"{name} errors at 32 in flight", f"{errors:.3%}", "< 0.1 %", errors < 0.001))
    for key, row in results.get("proxy-sqlite", {}).items():
        if not key.startswith("streams_"):
            continue
        n = row["streams"]
        direct_row = direct.get(key)
        out.append((f"{n} streams: failed", str(row["errors"]), "0", row["errors"] == 0))
        if row["kib_per_open_stream"] is not None:
            out.append(
                (
                    f"{n} streams: memory per open stream",
                    f"{row['kib_per_open_stream']:.1f} KiB",
                    "≤ 80 KiB",
                    row["kib_per_open_stream"] <= TARGETS["stream_kib"],
                )
            )
        if row["cpu_ms_per_stream"] is not None:
            out.append(
                (
                    f"{n} streams: CPU per stream",
                    f"{row['cpu_ms_per_stream']:.2f} ms",
                    "≤ 3 ms",
                    row["cpu_ms_per_stream"] <= TARGETS["stream_cpu_ms"],
                )
            )
        if direct_row and row["ttft_p99_ms"] is not None and direct_row["ttft_p99_ms"] is not None:
            over = row["ttft_p99_ms"] - direct_row["ttft_p99_ms"]
            out.append(
                (
                    f"{n} streams: TTFT p99 over direct",
                    f"{over:.0f} ms",
                    "≤ 50 ms",
                    over <= TARGETS["ttft_p99_over_direct_ms"],
                )
            )
    for scenario, entry in results.get("records", {}).items():
        out.append(
            (
                f"records = requests ({scenario})",
                f"{entry['records']:,} / {entry['relayed']:,}",
                "equal, none pending",
                entry["ok"],
            )
        )
    return out


def write_results(results: dict, info: dict, table: list) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    base = RESULTS / f"gateways-{stamp}"
    base.with_suffix(".json").write_text(
        json.dumps({"machine": info, "results": results, "targets": table}, indent=2, default=str)
    )
    lines = [
        f"# Gateways benchmark, {info['date']}",
        "",
        f"- machine: {info['cpus']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}",
        f"- commit: {info['commit']}",
        f"- command: `{info['command']}`",
        "- gateway alone on CPU 1; fake upstream and load generators (wrk, bench/streams.py) on CPU 0",
        "",
        "| gateway | one at a time p50 | p99 | 32 in flight | errors |",
        "|---|---|---|---|---|",
    ]
    for name, row in results.items():
        if name == "records" or "one_at_a_time" not in row:
            continue
        one, many = row["one_at_a_time"], row["in_flight_32"]
        lines.append(
            f"| {name} | {one['p50_ms']:.3f} ms | {one['p99_ms']:.3f} ms | {many['rps']:,.0f} req/s | {many['errors']}/{many['requests']} |"
        )
    lines += [
        "",
        "| gateway | streams | failed | TTFT p50 | TTFT p99 | CPU per stream | memory per open stream |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        for key, s in row.items() if isinstance(row, dict) else ():
            if key.startswith("streams_"):
                cpu = (
                    f"{s['cpu_ms_per_stream']:.2f} ms"
                    if s["cpu_ms_per_stream"] is not None
                    else "—"
                )
                mem = (
                    f"{s['kib_per_open_stream']:.1f} KiB"
                    if s["kib_per_open_stream"] is not None
                    else "—"
                )
                lines.append(
                    f"| {name} | {s['streams']:,} | {s['errors']} | {s['ttft_p50_ms'] or 0:,.0f} ms | {s['ttft_p99_ms'] or 0:,.0f} ms | {cpu} | {mem} |"
                )
    lines += ["", "| target | figure | wanted | met |", "|---|---|---|---|"]
    for what, figure, wanted, met in table:
        lines.append(f"| {what} | {figure} | {wanted} | {'yes' if met else 'NO'} |")
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return base.with_suffix(".md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument(
        "--streams", default="1000,2000", help="concurrent stream counts ('' for none)"
    )
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/bench_gateways"
    )
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",") if n]
    results: dict = {}
    info = machine()
    print(
        f"gateways benchmark on {info['cpus']} CPUs ({info['cpu']}), commit {info['commit']}",
        flush=True,
    )

    sqlite_env = scratch_env("bench-gateways-", "", "", UPSTREAM_KEY)
    fake = Fake(sqlite_env)
    running: list = []

    def start(server):
        running.append(server.start())
        return server

    def stop(server) -> None:
        server.stop()
        running.remove(server)

    def streams_one_process_each(name: str, server) -> None:
        # A fresh process per count: memory a process took is not given back, and the next
        # count would otherwise measure only what it adds.
        for n in counts:
            start(server)
            books = Books(server, fake) if isinstance(server, Proxy) else None
            stream_scenarios(name, server.url, server.key, server.proc.pid, [n], results)
            if books:
                books.check(results, f"{name} {n} streams")
            stop(server)

    try:
        direct = f"{fake.v1}/chat/completions"
        request_scenarios("direct", direct, UPSTREAM_KEY, args.seconds, results)
        stream_scenarios("direct", direct, UPSTREAM_KEY, None, counts, results)

        proxy = Proxy("proxy-sqlite", sqlite_env, fake)
        start(proxy)
        books = Books(proxy, fake)
        request_scenarios("proxy-sqlite", proxy.url, proxy.key, args.seconds, results)
        books.check(results, "proxy-sqlite requests")
        stop(proxy)
        streams_one_process_each("proxy-sqlite", proxy)

        why = "" if args.skip_postgres else _unreachable(args.database_url, args.cache_url)
        if why:
            print(f"  proxy-postgres           SKIPPED: {why}", flush=True)
        if not args.skip_postgres and not why:
            _fresh_postgres(args.database_url)
            _flush_redis(args.cache_url)
            pg_env = scratch_env(
                "bench-gateways-pg-", args.database_url, args.cache_url, UPSTREAM_KEY
            )
            # A budget and rate limits: the reservation and the Redis counters on every call.
            proxy = Proxy(
                "proxy-postgres", pg_env, fake,
                "--budget", "100000", "--rpm", "100000000", "--tpm", "2000000000",
            )  # fmt: skip
            start(proxy)
            books = Books(proxy, fake)
            request_scenarios("proxy-postgres", proxy.url, proxy.key, args.seconds, results)
            books.check(results, "proxy-postgres requests")
            stop(proxy)

        if not args.skip_litellm:
            lite = LiteLLM(fake)
            start(lite)
            request_scenarios("litellm", lite.url, lite.key, args.seconds, results)
            stop(lite)
            streams_one_process_each("litellm", lite)
    finally:
        for server in list(running):
            server.stop()
        _stop(fake.proc)

    table = verdicts(results)
    print("\ntargets:")
    for what, figure, wanted, met in table:
        print(f"  {'ok ' if met else 'NO '} {what}: {figure} (target {wanted})")
    path = write_results(results, info, table)
    print(f"\nwritten to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
