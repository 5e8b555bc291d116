"""What the metrics and the request log add to a request: `Exchange.finish` timed with both, and
with neither (relay.metrics.observe and relay.request_log.write made no-ops), in one process.

The log line is written at the loop's next turn (after the answer went out); it is counted
here all the same. The record writer is left out (its queue is emptied, nothing is written) so that only the
finishing is timed. The log line goes to /dev/null, formatted as LOG_FORMAT says (plain, json);
with --multiprocess the metrics are kept in files, as `serve` runs them.

    .venv/bin/python bench/metrics_overhead.py [--n 20000] [--log-format json] [--multiprocess]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="finishes per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--log-format", choices=("plain", "json"), default="plain")
    parser.add_argument("--multiprocess", action="store_true")
    args = parser.parse_args()
    # Before Django and prometheus_client are imported, as in a server process.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxyserver.settings")
    os.environ.setdefault("SECRET_KEY", "bench-secret-never-used-outside-the-benchmarks-0123456789")
    os.environ["LOG_FORMAT"] = args.log_format
    os.environ["LOG_LEVEL"] = "INFO"
    if args.multiprocess:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
    else:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import logging

    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(os.devnull, "w"))
    asyncio.run(_compare(args.n, args.rounds))


async def _compare(n: int, rounds: int) -> None:
    from django.utils import timezone

    from keys.selectors import KeyInfo, LimitSnapshot
    from relay import exchange, metrics, recording, request_log
    from usage.pricing import Price, PriceBook, TokenUsage

    now = timezone.now()
    book = PriceBook(
        [
            Price(
                model="gpt-4o-mini",
                effective_from=now - dt.timedelta(days=1),
                rates={
                    "input_per_1m": Decimal("0.15"),
                    "cached_input_per_1m": Decimal("0.075"),
                    "output_per_1m": Decimal("0.60"),
                },
            )
        ]
    )
    key = KeyInfo(
        id=1,
        user_id=1,
        username="bench",
        prefix="sk-proxy-bench0",
        name="",
        expires_at=None,
        log_bodies=False,
        key_limits=LimitSnapshot(),
        user_limits=LimitSnapshot(),
    )
    usage = TokenUsage(prompt=120, cached=64, completion=80, reasoning=16)
    recording.record_later = lambda record: None  # nothing written: finishing alone is timed

    async def run() -> float:
        started = time.perf_counter()
        for _ in range(n):
            ex = exchange.Exchange(key, "chat/completions", now=now)
            ex.set_model("gpt-4o-mini")
            ex.upstream_status = 200
            ex.upstream_seconds = 0.001
            ex.finish(
                200,
                book=book,
                usage=usage,
                response_model="gpt-4o-mini",
                upstream_request_id="req_0123456789abcdef0123456789abcdef",
            )
        await asyncio.sleep(0)  # the log lines, written at the loop's next turn
        return (time.perf_counter() - started) / n * 1e6

    observe, write = metrics.observe, request_log.write
    results: dict[str, list[float]] = {"without": [], "with": []}
    await run()  # warm up: label children, the price book's resolutions
    for _ in range(rounds):
        metrics.observe, request_log.write = (lambda *a: None), (lambda *a: None)
        results["without"].append(await run())
        metrics.observe, request_log.write = observe, write
        results["with"].append(await run())
    without = statistics.median(results["without"])
    with_both = statistics.median(results["with"])
    mode = "multiprocess files" if metrics.MULTIPROCESS_DIR else "in-process"
    print(f"Exchange.finish, median of {rounds} rounds of {n} ({mode} metrics, log as ", end="")
    print(f"{os.environ['LOG_FORMAT']} to /dev/null):")
    print(f"  without metrics and log: {without:6.1f} µs per finish")
    print(f"  with metrics and log:    {with_both:6.1f} µs per finish")
    print(f"  added:                   {with_both - without:6.1f} µs per request")


if __name__ == "__main__":
    main()
