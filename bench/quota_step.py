"""What the quota step costs a request: the atomic reservation, and the rate-limit script.

Times `keys.services.quota_reserve` as the relay calls it (in the relay's database thread)
on a key and a user that both have a budget, then the settlement written with the usage record, and `keys.ratelimit.rate_acquire` + `rate_release` (Redis when --cache-url).

    .venv/bin/python bench/quota_step.py [--n 2000] [--database-url postgres://…] [--cache-url redis://…]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--cache-url", default="")
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = (
        args.database_url or f"sqlite:///{tempfile.mkdtemp()}/quota.sqlite3"
    )
    os.environ["CACHE_URL"] = args.cache_url
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True
    )
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxyserver.settings")
    import django

    django.setup()
    from django.utils import timezone

    from keys.ratelimit import rate_acquire, rate_release
    from keys.selectors import key_info_for_secret
    from keys.services import key_issue, quota_reserve, user_limit_set
    from relay.database import in_db_thread
    from usage.models import RecordState, UsageRecord
    from usage.services import usage_records_write

    api_key, secret = key_issue(
        username=f"bench-{time.time_ns()}",
        budget_usd=Decimal(1_000_000),
        rpm=10**9,
        tpm=2_000_000_000,
        max_concurrent=10**6,
    )
    user_limit_set(user=api_key.user, budget_usd=Decimal(1_000_000))
    key = key_info_for_secret(secret)

    def pending() -> UsageRecord:
        return UsageRecord(
            created_at=timezone.now(), user_id=key.user_id, api_key_id=key.id,
            key_prefix=key.prefix, endpoint="chat/completions", model="gpt-4o-mini",
            status_code=0, prompt_tokens=20, state=RecordState.PENDING, process="bench",
            uid=uuid.uuid4(),
        )  # fmt: skip

    def settle(record: UsageRecord) -> None:
        record.status_code, record.completion_tokens = 200, 10
        record.cost_usd = Decimal("0.0001")
        usage_records_write(records=[record])

    async def run() -> tuple[list[float], list[float], list[float]]:
        reserve_ms, settle_ms, rate_ms = [], [], []
        for i in range(args.n + 100):
            start = time.perf_counter()
            record = pending()
            await in_db_thread(
                quota_reserve, key=key, cost=Decimal("0.0002"), tokens=50, now=timezone.now(),
                record=record,
            )  # fmt: skip
            mid = time.perf_counter()
            await in_db_thread(settle, record)
            end = time.perf_counter()
            ticket = await rate_acquire(key, tokens=50)
            await rate_release(ticket, actual_tokens=40)
            done = time.perf_counter()
            if i >= 100:  # after warm-up
                reserve_ms.append((mid - start) * 1000)
                settle_ms.append((end - mid) * 1000)
                rate_ms.append((done - end) * 1000)
        return reserve_ms, settle_ms, rate_ms

    reserve_ms, settle_ms, rate_ms = asyncio.run(run())
    db = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite"
    print(
        f"quota step, {args.n} requests, {db}, rate limits in {'Redis' if args.cache_url else 'process memory'}"
    )
    print(f"{'':34} {'p50 ms':>8} {'p95 ms':>8}")
    for name, values in (
        ("reserve (on the request path)", reserve_ms),
        ("settle (after the answer)", settle_ms),
        ("rate limits acquire+release", rate_ms),
    ):
        print(f"{name:34} {pct(values, 0.5):8.3f} {pct(values, 0.95):8.3f}")


if __name__ == "__main__":
    main()
