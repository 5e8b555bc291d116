"""What the proxy adds to one chat call, and how many it relays per second.

Starts the fake OpenAI upstream and the proxy (uvicorn + uvloop + httptools, one process, as
`manage.py serve` runs it) on a scratch database, then times the same chat request sent
straight to the fake and through the proxy, one at a time (added latency) and with many in
flight (throughput).

    .venv/bin/python bench/relay_latency.py [--requests 2000] [--concurrency 50]
                                           [--database-url postgres://...] [--cache-url redis://...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.management.commands.serve import uvicorn_command  # noqa: E402
from tests.servers import _stop, _wait_http, free_port, scratch_env  # noqa: E402

UPSTREAM_KEY = "sk-bench-upstream"
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello"}],
    "max_tokens": 20,
}


def granian_command(port: int) -> list[str]:
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
        "--port", str(port), "--loop", "uvloop", "--no-ws", "--log-level", "warning",
        "proxyserver.asgi:application",
    ]  # fmt: skip


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def sequential(url: str, headers: dict[str, str], n: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(50):  # warm up connections, caches, the key and price lookups
            async with session.post(url, json=BODY, headers=headers) as resp:
                await resp.read()
        for _ in range(n):
            start = time.perf_counter()
            async with session.post(url, json=BODY, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            times.append((time.perf_counter() - start) * 1000)
    return times


async def concurrent(url: str, headers: dict[str, str], n: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(range(n))

        async def worker() -> None:
            for _ in queue:
                async with session.post(url, json=BODY, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--cache-url", default="")
    parser.add_argument(
        "--server", choices=("uvicorn", "granian"), default="uvicorn",
        help="ASGI server to compare (granian: `pip install granian` first)",
    )  # fmt: skip
    parser.add_argument(
        "--budget", action="store_true", help="give the key a budget (reservation priced)"
    )
    args = parser.parse_args()

    env = scratch_env("bench-relay-", args.database_url, args.cache_url, UPSTREAM_KEY)
    py = sys.executable
    subprocess.run(
        [py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    budget = ["--budget", "1000"] if args.budget else []
    secret = (
        subprocess.run(
            [py, "manage.py", "create_api_key", "bench", *budget],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    fake_port, proxy_port = free_port(), free_port()
    fake = subprocess.Popen(
        [py, "manage.py", "fake_openai", "--port", str(fake_port), "--key", UPSTREAM_KEY],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{fake_port}/v1"
    proxy = subprocess.Popen(
        uvicorn_command(host="127.0.0.1", port=proxy_port)
        if args.server == "uvicorn"
        else granian_command(proxy_port),
        cwd=ROOT,
        env=env,
    )
    try:
        _wait_http(f"http://127.0.0.1:{fake_port}/_fake/stats", fake)
        _wait_http(f"http://127.0.0.1:{proxy_port}/healthz", proxy)
        direct_url = f"http://127.0.0.1:{fake_port}/v1/chat/completions"
        proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        direct = asyncio.run(
            sequential(direct_url, {"Authorization": f"Bearer {UPSTREAM_KEY}"}, args.requests)
        )
        proxied = asyncio.run(
            sequential(proxy_url, {"Authorization": f"Bearer {secret}"}, args.requests)
        )
        direct_rps = asyncio.run(
            concurrent(
                direct_url,
                {"Authorization": f"Bearer {UPSTREAM_KEY}"},
                args.requests,
                args.concurrency,
            )
        )
        proxy_rps = asyncio.run(
            concurrent(
                proxy_url, {"Authorization": f"Bearer {secret}"}, args.requests, args.concurrency
            )
        )
    finally:
        _stop(proxy)
        _stop(fake)
    db = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite"
    print(
        f"relay latency ({args.server}), {args.requests} sequential chat calls, {db}, "
        f"cache {'Redis' if args.cache_url else 'in-process'}, key {'with' if args.budget else 'without'} budget"
    )
    print(f"{'':10} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    for name, times in (("direct", direct), ("proxied", proxied)):
        print(
            f"{name:10} {pct(times, 0.5):8.3f} {pct(times, 0.95):8.3f} {statistics.mean(times):8.3f}"
        )
    print(
        f"{'added':10} {pct(proxied, 0.5) - pct(direct, 0.5):8.3f} {pct(proxied, 0.95) - pct(direct, 0.95):8.3f} "
        f"{statistics.mean(proxied) - statistics.mean(direct):8.3f}"
    )
    print(
        f"throughput at {args.concurrency} in flight: direct {direct_rps:,.0f} req/s, "
        f"proxied {proxy_rps:,.0f} req/s (one proxy process; the client shares the 2 cores)"
    )


if __name__ == "__main__":
    main()
