"""How far concurrent costly calls push recorded spend past a small budget, per kind of call.

Starts the fake OpenAI upstream (billing what OpenAI would at most, with its own counting)
and two proxy processes on a scratch database, then for each kind of call in tests/attacks.py
sends 20 at once over both processes with a key whose budget is less than one call costs,
and prints recorded spend ÷ budget (≤ 1.00 means the budget held).

    .venv/bin/python bench/budget_overspend.py [--database-url postgres://...]
                                               [--cache-url redis://...] [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from relay.management.commands.serve import uvicorn_command  # noqa: E402
from tests.attacks import ATTACKS, send  # noqa: E402
from tests.servers import _stop, _wait_http, free_port, manage, scratch_env  # noqa: E402

UPSTREAM_KEY = "sk-bench-upstream"


def _spent(url: str, secret: str) -> Decimal:
    request = urllib.request.Request(
        f"{url}/v1/proxy/me", headers={"Authorization": f"Bearer {secret}"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        me = json.loads(resp.read())
    return Decimal(str(me["usage"]["key"]["spent_usd"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--cache-url", default="")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument(
        "--budget",
        type=Decimal,
        help="one budget for every kind (default: each kind's, less than one call costs)",
    )
    args = parser.parse_args()
    env = scratch_env("bench-overspend-", args.database_url, args.cache_url, UPSTREAM_KEY)
    manage(env, "migrate", "--noinput", "-v", "0")
    fake_port = free_port()
    fake = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "fake_openai",
            "--port",
            str(fake_port),
            "--key",
            UPSTREAM_KEY,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{fake_port}/v1"
    ports = [free_port(), free_port()]
    proxies = [
        subprocess.Popen(uvicorn_command(host="127.0.0.1", port=p), cwd=ROOT, env=env)
        for p in ports
    ]
    rows = []
    try:
        _wait_http(f"http://127.0.0.1:{fake_port}/_fake/stats", fake)
        for port, proc in zip(ports, proxies, strict=True):
            _wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for n, attack in enumerate(ATTACKS):
            user = f"attacker-{n}"
            ctx = {}
            if attack.setup is not None:
                free = manage(env, "create_api_key", user).splitlines()[-1]
                ctx = attack.setup(openai.OpenAI(api_key=free, base_url=f"{urls[0]}/v1"))
            budget = args.budget or attack.budget
            secret = manage(env, "create_api_key", user, "--budget", str(budget)).splitlines()[-1]
            clients = [
                openai.OpenAI(api_key=secret, base_url=f"{u}/v1", max_retries=0, timeout=60)
                for u in urls
            ]
            with ThreadPoolExecutor(max_workers=args.calls) as pool:
                calls = [(clients[i % 2], attack, ctx) for i in range(args.calls)]
                outcomes = list(pool.map(lambda call: send(*call), calls))
            time.sleep(1.5)  # records are written just after the answers
            spent = _spent(urls[0], secret)
            rows.append((attack.name, budget, outcomes.count("ok"), spent))
    finally:
        for proc in proxies:
            _stop(proc)
        _stop(fake)
    db = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite"
    print(f"budget overspend: {args.calls} concurrent calls per kind, two proxy processes, {db}")
    print(f"{'kind of call':32} {'budget':>8} {'answered':>9} {'spent':>10} {'spent/budget':>13}")
    for name, budget, ok, spent in rows:
        print(f"{name:32} {budget:>8} {ok:>9} {spent:>10.6f} {spent / budget:>12.2f}×")


if __name__ == "__main__":
    main()
