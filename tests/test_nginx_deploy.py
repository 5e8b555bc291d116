"""The README's deployment at scale, run: Debian's nginx with `deploy/nginx.conf` in front of two
`manage.py serve --workers 2` instances on one PostgreSQL and one Redis, driven with the
official SDK from several threads, one instance killed (SIGKILL) mid-traffic.

What a user of the deployment would notice: every request succeeds or fails cleanly, budgets
and rate limits hold across the instances, a revoked key is refused at once by the survivor,
and every request an instance answered has exactly one record (the killed instance's
reservations ended by the survivor's reaper). The figures are printed (`-s` shows them).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.e2e import REDIS_URL, wait_for
from tests.servers import ROOT, UPSTREAM_KEY, database_url, free_port

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else ""
)
SITE = ROOT / "deploy" / "nginx.conf"
MODEL = "gpt-4o-mini"
KILL_AFTER_SECONDS = 2.0
# Each budgeted request waits this long upstream: two threads make at most
# 2 * KILL_AFTER_SECONDS / BUDGET_LATENCY requests before the kill, fewer than the budget
# holds, so the budget runs out (and refusals start) on the survivor, after the kill.
BUDGET_LATENCY_MS = 400
BUDGET_USD = Decimal("0.0003")  # about 22 of the budgeted requests' worst case

needs_nginx = pytest.mark.skipif(
    not NGINX, reason="nginx not installed (apt-get install nginx, or run .ci/run)"
)


def site_config(listen: int, instances: tuple[int, int]) -> str:
    """deploy/nginx.conf with only its ports changed: the file under test is the shipped one."""
    text = SITE.read_text()
    text, listens = re.subn(
        r"^(\s*)listen 8000;$", rf"\1listen 127.0.0.1:{listen};", text, flags=re.M
    )
    for default, port in zip((8001, 8002), instances, strict=True):
        text, found = re.subn(rf"server 127\.0\.0\.1:{default} ", f"server 127.0.0.1:{port} ", text)
        assert found == 1, f"deploy/nginx.conf lost its instance on 127.0.0.1:{default}"
    assert listens == 1, "deploy/nginx.conf lost its `listen 8000;`"
    return text


@dataclasses.dataclass
class Nginx:
    url: str
    proc: subprocess.Popen
    access_log: Path

    def log(self) -> list[str]:
        return self.access_log.read_text().splitlines()


def start_nginx(prefix: Path, site: str) -> Nginx:
    """nginx as a plain process: its own prefix, logs and temp folders, no daemon, no root."""
    for folder in ("logs", "temp"):
        (prefix / folder).mkdir(parents=True)
    (prefix / "site.conf").write_text(site)
    port = int(re.search(r"listen 127\.0\.0\.1:(\d+);", site).group(1))
    access_log = prefix / "logs" / "access.log"
    temp = prefix / "temp"
    (prefix / "nginx.conf").write_text(
        f"error_log {prefix}/logs/error.log warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    log_format test '$msec $status $upstream_addr $upstream_status \"$request\"';\n"
        f"    access_log {access_log} test;\n"
        + "".join(
            f"    {kind}_temp_path {temp}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"    include {prefix}/site.conf;\n"
        "}\n"
    )
    # As root, nginx would hand its workers to "nobody", who cannot enter pytest's folders.
    user = f" user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    proc = subprocess.Popen(
        [NGINX, "-c", str(prefix / "nginx.conf"), "-p", str(prefix),
         "-g", f"daemon off; pid {prefix}/nginx.pid;{user}"],
        stdout=subprocess.DEVNULL,
        stderr=open(prefix / "logs" / "stderr.log", "w"),
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        assert proc.poll() is None, (prefix / "logs" / "stderr.log").read_text()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() < deadline, "nginx did not listen"
        time.sleep(0.05)
    return Nginx(url=f"http://127.0.0.1:{port}", proc=proc, access_log=access_log)


def start_instance(port: int, upstream_url: str, log: Path) -> subprocess.Popen:
    """One instance as the README runs it: `manage.py serve --workers 2`, in its own process
    group so that a SIGKILL takes its supervisor and workers at once, as a crashed host would."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CACHE_URL": REDIS_URL,
        "OPENAI_BASE_URL": upstream_url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "SECRET_KEY": "test-secret-never-used-outside-the-tests-0123456789abcdef",
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "READYZ_CHECK_UPSTREAM": "true",
        # Revocation must not wait for a key cache this long.
        "PROXY_KEY_CACHE_SECONDS": "30",
        "PRICE_CACHE_SECONDS": "0.5",
        # The killed instance's reservations are ended within seconds, not the default 30.
        "PROXY_HEARTBEAT_SECONDS": "0.5",
        "PROXY_REAP_AFTER_SECONDS": "3",
    }
    return subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url}/readyz never answered 200: {log.read_text()}"
        time.sleep(0.1)


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


@pytest.fixture
def deployment(e2e, tmp_path) -> Iterator[tuple[Nginx, list[subprocess.Popen]]]:
    from django.db import connection

    if connection.vendor != "postgresql" or not REDIS_URL:
        pytest.skip(
            "needs PostgreSQL (DATABASE_URL) and Redis (TEST_REDIS_URL): several instances "
            "share them; SQLite is one host only (.ci/run sets both)"
        )
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    ports = (free_port(), free_port())
    logs = [tmp_path / f"instance-{port}.log" for port in ports]
    instances = [
        start_instance(port, e2e.upstream.url, log) for port, log in zip(ports, logs, strict=True)
    ]
    nginx = None
    try:
        for port, proc, log in zip(ports, instances, logs, strict=True):
            wait_ready(f"http://127.0.0.1:{port}", proc, log)
        nginx = start_nginx(tmp_path / "nginx", site_config(free_port(), ports))
        yield nginx, instances
        for log in logs:
            assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        # Before the test database is flushed: nothing may still be writing to it.
        for proc in instances:
            stop_group(proc)
        if nginx is not None:
            nginx.proc.terminate()
            nginx.proc.wait(timeout=10)


@dataclasses.dataclass
class Outcomes:
    ok: list[str] = dataclasses.field(default_factory=list)  # upstream x-request-ids
    refused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unclean: list[str] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def total(self) -> int:
        return len(self.ok) + sum(self.refused.values()) + sum(self.failed.values())


def one_request(client: openai.OpenAI, n: int, stream: bool, fake: dict, out: Outcomes) -> None:
    """One chat completion, plain or streamed; its outcome filed as ok, refused (the proxy's
    own 4xx), failed cleanly (nginx's 502 for an instance gone, a stream cut) or unclean."""
    messages = [{"role": "user", "content": f"request {n}: say something"}]
    try:
        if stream:
            chunks = client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=20,
                stream=True,
                extra_body={"fake": fake},
            )
            text, finished = "", None
            for chunk in chunks:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finished = chunk.choices[0].finish_reason or finished
            assert text and finished, f"stream ended without text or finish_reason: {text!r}"
            request_id = chunks.response.headers["x-request-id"]
        else:
            reply = client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=20, extra_body={"fake": fake}
            )
            assert reply.choices[0].message.content, "an answer without content"
            request_id = reply._request_id
        with out.lock:
            out.ok.append(request_id)
    except openai.APITimeoutError as exc:  # a hang is not a clean failure
        with out.lock:
            out.unclean.append(f"timeout: {exc}")
    except openai.APIStatusError as exc:
        code = (exc.body or {}).get("code") if isinstance(exc.body, dict) else None
        with out.lock:
            if exc.status_code in (401, 429) and code:
                out.refused[code] += 1
            elif exc.status_code in (502, 504):  # nginx: the instance died with it in flight
                out.failed[f"{exc.status_code} from nginx"] += 1
            else:
                out.unclean.append(f"{exc.status_code}: {exc.body}")
    except (openai.APIConnectionError, httpx.TransportError) as exc:  # a stream cut mid-way
        with out.lock:
            out.failed[type(exc).__name__] += 1
    except Exception as exc:  # noqa: BLE001 (anything else is what this test looks for)
        with out.lock:
            out.unclean.append(f"{type(exc).__name__}: {exc}")


def run_threads(count: int, work: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def database_connections() -> int:
    """Connections to the test database other than this test's own."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def records(secret: str):
    from keys.models import key_hash
    from usage.models import UsageRecord

    return UsageRecord.objects.filter(api_key__key_hash=key_hash(secret))


@needs_nginx
def test_two_instances_behind_nginx_survive_one_killed_mid_traffic(e2e, deployment):
    from keys.models import ApiKey, key_hash
    from keys.services import key_revoke

    nginx, (doomed, survivor) = deployment
    started = time.monotonic()
    traffic_key = e2e.key("traffic")
    budget_key = e2e.key("budget", budget_usd=BUDGET_USD, period="total")
    rpm_key = e2e.key("rpm", rpm=10)
    revoked_key = e2e.key("revoked")

    def client(secret: str) -> openai.OpenAI:
        return openai.OpenAI(api_key=secret, base_url=f"{nginx.url}/v1", max_retries=0, timeout=20)

    # A rate limit is one limit, whichever instance nginx picks: 10 of 20 within the minute.
    rpm = Outcomes()
    for n in range(20):
        one_request(client(rpm_key), n, n % 2 == 1, {}, rpm)
    assert rpm.unclean == [] and not rpm.failed
    assert (len(rpm.ok), rpm.refused["rate_limit_exceeded"]) == (10, 10)

    # Streams and the Realtime WebSocket come through nginx unbuffered and upgraded.
    with client(traffic_key).realtime.connect(model="gpt-realtime") as conn:
        assert conn.recv().type == "session.created"
        conn.response.create(response={"max_output_tokens": 200})
        done = next(event for event in conn if event.type == "response.done")
        assert done.response.status == "completed"
    # A client's own X-Forwarded-For is replaced by nginx with its real address.
    login = httpx.get(
        f"{nginx.url}/api/usage/",
        auth=("nobody", "wrong"),
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert login.status_code in (401, 403)
    from axes.models import AccessAttempt

    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"127.0.0.1"}
    # A body over PROXY_MAX_BODY_BYTES gets the proxy's 413 in OpenAI's shape, not nginx's page.
    big = httpx.post(
        f"{nginx.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {revoked_key}", "Content-Type": "application/json"},
        content=b'{"model": "gpt-4o-mini", "x": "' + b"a" * (20 * 1024 * 1024) + b'"}',
        timeout=30,
    )
    assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"
    # The key to revoke is known (cached) on both instances before the kill.
    warm = Outcomes()
    for n in range(4):
        one_request(client(revoked_key), n, False, {}, warm)
    assert len(warm.ok) == 4

    traffic, budget = Outcomes(), Outcomes()
    stop = threading.Event()

    def mixed(i: int) -> None:
        n = 0
        while not stop.is_set():
            # Streams of about a second (20 chunks, 50 ms apart) and short plain requests.
            fake = {"chunk_delay_ms": 50} if n % 2 else {"latency_ms": 100}
            one_request(client(traffic_key), i * 10_000 + n, n % 2 == 1, fake, traffic)
            n += 1

    def budgeted(i: int) -> None:
        n = 0
        while not stop.is_set():
            fake = {"latency_ms": BUDGET_LATENCY_MS}
            one_request(client(budget_key), i * 10_000 + n, n % 2 == 1, fake, budget)
            n += 1

    threads = run_threads(8, mixed) + run_threads(2, budgeted)
    time.sleep(KILL_AFTER_SECONDS)
    # README "Sizing": the relay holds at most 9 PostgreSQL connections per worker process (8
    # request-path threads and the writer); 2 instances x 2 workers here.
    connections = database_connections()
    assert connections <= 2 * 2 * 9
    assert not budget.refused, "the budget ran out before the kill: raise BUDGET_USD"
    os.killpg(doomed.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    doomed.wait(timeout=10)
    # Traffic goes on through the survivor until the budget is spent there.
    wait_for(
        lambda: budget.refused["insufficient_quota"] >= 2 and time.monotonic() - killed_at > 3,
        timeout=30,
        what="the budget to run out on the surviving instance",
    )
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a client hung"

    # Revoked while the survivor has the key cached (PROXY_KEY_CACHE_SECONDS=30): refused at once.
    key_revoke(api_key=ApiKey.objects.get(key_hash=key_hash(revoked_key)))
    after_revoke = Outcomes()
    for n in range(4):
        one_request(client(revoked_key), n, n % 2 == 1, {}, after_revoke)
    assert after_revoke.refused == {"invalid_api_key": 4} and not after_revoke.ok

    # The survivor's reaper ends the killed instance's reservations.
    from usage.models import RecordState

    both = (traffic_key, budget_key)
    wait_for(
        lambda: not any(records(s).filter(state=RecordState.PENDING).exists() for s in both),
        timeout=20,
        what="the killed instance's pending records to be reaped",
    )
    time.sleep(0.5)  # the survivor's last records

    for out in (traffic, budget):
        assert out.unclean == [], out.unclean
    assert budget.refused.keys() <= {"insufficient_quota"}
    assert sum(traffic.failed.values()) >= 1, "nothing was in flight on the killed instance"

    # Budgets hold: the budget key never spent past its budget, reaped estimates included.
    budget_rows = records(budget_key)
    spent = sum((row.cost_usd or Decimal(0) for row in budget_rows), Decimal(0))
    assert 0 < spent <= BUDGET_USD

    # Records hold: every answer an instance gave has exactly one record; every other record is
    # a request the killed instance had in flight (or had answered in the last 50 ms before its
    # writer could write it down), ended by the reaper.
    figures = {}
    for name, secret, out in (("traffic", traffic_key, traffic), ("budget", budget_key, budget)):
        # (The traffic key's Realtime session before the traffic is left out.)
        rows = [row for row in records(secret) if row.endpoint == "chat/completions"]
        by_request_id = collections.Counter(row.upstream_request_id for row in rows)
        reaped = [row for row in rows if row.state == RecordState.REAPED]
        refused_rows = [row for row in rows if row.status_code == 429]
        unmatched_ok = [rid for rid in out.ok if by_request_id[rid] != 1]
        assert all(by_request_id[rid] <= 1 for rid in out.ok), "an answer recorded twice"
        assert len(unmatched_ok) <= len(reaped), unmatched_ok
        assert len(refused_rows) == sum(out.refused.values())  # refused on the survivor only
        assert {row.error_code for row in reaped} <= {"proxy_died"}
        assert len(rows) == len(out.ok) - len(unmatched_ok) + len(refused_rows) + len(reaped)
        assert len(reaped) <= sum(out.failed.values()) + len(unmatched_ok)
        figures[name] = {
            "requests": out.total(),
            "ok": len(out.ok),
            "refused": dict(out.refused),
            "failed": dict(out.failed),
            "records": len(rows),
            "reaped": len(reaped),
            "ok recorded only as reaped": len(unmatched_ok),
        }

    assert survivor.poll() is None, "the surviving instance went down too"
    log = nginx.log()
    retried = [line for line in log if ", " in line.split()[2]]
    figures["nginx"] = {
        "responses": len(log),
        "502 from nginx": sum(1 for line in log if line.split()[1] == "502"),
        "sent on to the survivor after a refused connection": len(retried),
        "budget spent / budget (USD)": f"{spent} / {BUDGET_USD}",
        "PostgreSQL connections of 2 x 2 workers": connections,
        "seconds": round(time.monotonic() - started, 1),
    }
    print("\nnginx deployment figures:", figures)


def test_the_compose_recipe_runs_the_tested_nginx_site_and_the_image_as_documented():
    """docker-compose.yml and the Dockerfile cannot run here (no Docker daemon): they are
    checked against the tested recipe instead."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    nginx = services["nginx"]

    assert {"setup", "proxy1", "proxy2", "postgres", "redis", "nginx"} <= services.keys()
    assert "./deploy/nginx.conf:/deploy/nginx.conf:ro" in nginx["volumes"]
    # The site nginx runs there is the tested one with only its two server lines changed.
    site = SITE.read_text()
    for old, new in re.findall(r"s/([^/]+)/([^/]+)/", nginx["command"][-1]):
        assert site.count(old.replace("\\", "")) == 1, old
        site = site.replace(old, new)
    assert "server proxy1:8000 " in site and "server proxy2:8000 " in site
    assert "127.0.0.1:800" not in site
    # uvicorn believes X-Forwarded-For from nginx's address alone, as on one host.
    for name in ("setup", "proxy1", "proxy2"):
        env = services[name]["environment"]
        assert env["FORWARDED_ALLOW_IPS"] == nginx["networks"]["backend"]["ipv4_address"]
        assert env["CACHE_URL"].startswith("redis://") and env["DATABASE_URL"].startswith(
            "postgres"
        )
    assert [services[n]["command"] for n in ("setup", "proxy1", "proxy2")] == [
        ["setup"],
        ["serve"],
        ["serve"],
    ]
    entrypoint = (ROOT / "deploy" / "docker-entrypoint.sh").read_text()
    assert "setup) setup" in entrypoint and "serve) serve" in entrypoint
    assert (
        "manage.py serve --host 0.0.0.0" in entrypoint
        and "make" not in entrypoint.split("set -eu")[1]
    )
    assert os.access(ROOT / "deploy" / "docker-entrypoint.sh", os.X_OK)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11-slim\n" in dockerfile
    assert re.search(r"^USER proxy$", dockerfile, re.M) and "/readyz" in dockerfile
    # nginx's own 413 only past the proxy's, which answers in OpenAI's error shape.
    assert "client_max_body_size 21m;" in SITE.read_text()
    sample = (ROOT / "sample.env").read_text()
    assert f"\nPROXY_MAX_BODY_BYTES={20 * 1024 * 1024}\n" in sample
