"""How fast the dashboards and the usage API answer with a million usage records.

    .venv/bin/python bench/usage_scale.py [--records 1000000] [--database-url URL] [--runs 20]

Works on a scratch database it creates and migrates itself, and drops afterwards (unless
--keep): a temporary SQLite file by default, or, given --database-url (or DATABASE_URL) of a
PostgreSQL server, a database named `<that name>_usage_bench` on it; the named database is
never touched. It fills N records across ~50 users, ~100 keys, 10 models and 90 days (bulk
inserts on SQLite, COPY into the month partitions on PostgreSQL: 10,000,000 records in
minutes), building the UsageDaily, UsageHourly and UsageLatency rollups alongside exactly as
usage_record_create would, then times each page warm with Django's test Client and prints
p50/p95 in milliseconds, also written to bench/results/usage_scale-<database>-<N>-<time>.md.
Target: p95 under 300 ms for every dashboard page, the summary endpoint and the admin's usage
list.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import os
import random
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# USD per 1M tokens: (input, cached input, output); None is a fine-tune with no price.
MODELS: dict[str, tuple[Decimal, Decimal, Decimal] | None] = {
    "gpt-4o": (Decimal("2.50"), Decimal("1.25"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.075"), Decimal("0.60")),
    "gpt-4.1": (Decimal("2.00"), Decimal("0.50"), Decimal("8.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("0.10"), Decimal("1.60")),
    "gpt-4.1-nano": (Decimal("0.10"), Decimal("0.025"), Decimal("0.40")),
    "o3-mini": (Decimal("1.10"), Decimal("0.55"), Decimal("4.40")),
    "o4-mini": (Decimal("1.10"), Decimal("0.275"), Decimal("4.40")),
    "text-embedding-3-small": (Decimal("0.02"), Decimal("0.02"), Decimal("0")),
    "text-embedding-3-large": (Decimal("0.13"), Decimal("0.13"), Decimal("0")),
    "ft:gpt-4o-mini:acme::support": None,
}
MODEL_WEIGHTS = (20, 30, 8, 14, 6, 6, 4, 8, 2, 2)
USERS, KEYS_PER_USER, DAYS = 50, 2, 90
BATCH = 5000
# UsageDaily's counters, in the order fill() keeps them.
ROLLUP = (
    "requests",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "unpriced_requests",
    "cost_usd",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="a PostgreSQL server to make the scratch database on (default: temporary SQLite)",
    )
    parser.add_argument("--runs", type=int, default=20, help="timed runs per page")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch database (SQLite: bench/results/usage_bench.sqlite3)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="time a kept scratch database again, without filling"
    )
    return parser.parse_args()


def setup_django(database_url: str, scratch_dir: str) -> None:
    """Point the settings at the server (or a temp file) before Django reads them, and name
    the scratch database so it can never be the configured one or the test suite's."""
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{scratch_dir}/configured.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxyserver.settings")
    import django
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database["TEST"] = {"NAME": f"{scratch_dir}/usage_bench.sqlite3"}
    else:
        database["TEST"] = {"NAME": f"{database['NAME']}_usage_bench"}
    django.setup()


def fill(records: int, seed: int) -> dict[str, object]:
    """Users, keys, limits, ledger rows, `records` usage records and their rollup."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from keys.models import ApiKey, Period, QuotaLedger, UserLimit, key_hash, period_start
    from usage.models import UsageDaily, UsageHourly, UsageLatency, UsageRecord, latency_bucket
    from usage.partitions import month_start, partitions_ensure

    rng = random.Random(seed)
    user_model = get_user_model()
    now = timezone.now()
    user_model.objects.bulk_create(
        [user_model(username=f"user{n:02d}", password="!") for n in range(USERS)]
    )
    users = list(user_model.objects.filter(username__startswith="user").order_by("username"))
    staff = user_model.objects.create_superuser("bench-staff", "staff@example.com", "x")
    ApiKey.objects.bulk_create(
        [
            ApiKey(
                user=user,
                name=f"key {k}",
                prefix=f"sk-proxy-{u:02d}{k}xyz",
                key_hash=key_hash(f"bench-{u}-{k}"),
                budget_usd=Decimal(rng.choice([20, 50, 200])) if k == 0 else None,
                period=Period.MONTH,
            )
            for u, user in enumerate(users)
            for k in range(KEYS_PER_USER)
        ]
    )
    keys_by_user: dict[int, list[ApiKey]] = {}
    for key in ApiKey.objects.order_by("id"):
        keys_by_user.setdefault(key.user_id, []).append(key)
    UserLimit.objects.bulk_create(
        [UserLimit(user=u, budget_usd=Decimal(300), period=Period.MONTH) for u in users[::5]]
    )

    # A few heavy users and a long tail, as on a real gateway; users[0] is the heaviest.
    user_weights = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(USERS)))
    model_weights = list(itertools.accumulate(MODEL_WEIGHTS))
    model_names = list(MODELS)
    month = period_start(Period.MONTH, now)
    today = now.date()
    per_day = records // DAYS
    rollup: dict[tuple[dt.date, int, int, str], list] = {}
    hourly: dict[tuple[dt.datetime, int, str], list] = {}
    latencies: dict[tuple[dt.datetime, int, int], int] = {}
    spend_this_month: dict[int, Decimal] = {}
    started = time.perf_counter()
    made = 0
    batch: list = []
    copy = connection.vendor == "postgresql"
    if copy:  # the months a gateway running for 90 days would have made
        partitions_ensure(
            months=[month_start(today - dt.timedelta(days=d)) for d in range(0, DAYS + 31, 28)]
        )
    for d in range(DAYS):
        day = today - dt.timedelta(days=DAYS - 1 - d)
        count = per_day if d < DAYS - 1 else records - per_day * (DAYS - 1)
        seconds = sorted(rng.randrange(86_400) for _ in range(count))
        midnight = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
        for second in seconds:
            user = rng.choices(users, cum_weights=user_weights)[0]
            key = rng.choice(keys_by_user[user.pk])
            model = rng.choices(model_names, cum_weights=model_weights)[0]
            price = MODELS[model]
            embedding = model.startswith("text-embedding")
            status = 200 if rng.random() > 0.04 else rng.choice((400, 429, 500))
            prompt = rng.randint(50, 6000)
            cached = prompt // 2 if rng.random() < 0.25 else 0
            completion = 0 if embedding or status >= 400 else rng.randint(10, 1200)
            reasoning = completion // 3 if model.startswith("o") else 0
            if status >= 400 or price is None:
                cost = None
            else:
                cost = (
                    (prompt - cached) * price[0] + cached * price[1] + completion * price[2]
                ) / 1_000_000
            with_body = rng.random() < 0.01
            created_at = midnight + dt.timedelta(seconds=second)
            latency = rng.randint(120, 9000)
            hour = created_at.replace(minute=0, second=0, microsecond=0)
            totals = hourly.setdefault((hour, user.pk, model), [0, 0, Decimal(0), 0])
            totals[0] += 1
            totals[1] += status >= 400
            totals[2] += cost or 0
            totals[3] += cost is None and status < 400
            bucket = (hour, user.pk, latency_bucket(latency))
            latencies[bucket] = latencies.get(bucket, 0) + 1
            if copy:
                fields = (
                    created_at.isoformat(), user.pk, key.pk, key.prefix,
                    "embeddings" if embedding else "chat/completions", model, model, status,
                    "t" if not embedding and rng.random() < 0.4 else "f", prompt, cached,
                    completion, reasoning, NULL if cost is None else cost, latency,
                    f'{{"model": "{model}", "messages": []}}' if with_body else "",
                    '{"object": "chat.completion"}' if with_body else "",
                )  # fmt: skip
                batch.append("\t".join(map(str, fields)) + CONSTANTS)
            else:
                batch.append(
                    UsageRecord(
                        created_at=created_at,
                        user_id=user.pk,
                        api_key_id=key.pk,
                        key_prefix=key.prefix,
                        endpoint="embeddings" if embedding else "chat/completions",
                        model=model,
                        response_model=model,
                        status_code=status,
                        stream=not embedding and rng.random() < 0.4,
                        prompt_tokens=prompt,
                        cached_tokens=cached,
                        completion_tokens=completion,
                        reasoning_tokens=reasoning,
                        cost_usd=cost,
                        latency_ms=latency,
                        request_body=f'{{"model": "{model}", "messages": []}}' if with_body else "",
                        response_body='{"object": "chat.completion"}' if with_body else "",
                    )
                )
            # The same rules as usage_record_create, so rollup and records agree.
            sums = rollup.setdefault((day, user.pk, key.pk, model), [0] * 7 + [Decimal(0)])
            sums[0] += 1
            sums[1] += status >= 400
            sums[2] += prompt
            sums[3] += cached
            sums[4] += completion
            sums[5] += reasoning
            sums[6] += cost is None and status < 400
            sums[7] += cost or 0
            if cost and day >= month.date():
                spend_this_month[key.pk] = spend_this_month.get(key.pk, Decimal(0)) + cost
            if len(batch) >= (COPY_BATCH if copy else BATCH):
                made += _write(batch, copy)
                batch = []
        if (d + 1) % 10 == 0:
            print(
                f"  filled {d + 1}/{DAYS} days, {made:,} records "
                f"({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
            )
    if batch:
        made += _write(batch, copy)
    UsageHourly.objects.bulk_create(
        [
            UsageHourly(
                hour=hour, user_id=user_id, model=model, requests=n, errors=errors,
                cost_usd=cost, unpriced_requests=unpriced,
            )
            for (hour, user_id, model), (n, errors, cost, unpriced) in hourly.items()
        ],
        batch_size=BATCH,
    )  # fmt: skip
    UsageLatency.objects.bulk_create(
        [
            UsageLatency(hour=hour, user_id=user_id, bucket=bucket, requests=n)
            for (hour, user_id, bucket), n in latencies.items()
        ],
        batch_size=BATCH,
    )
    UsageDaily.objects.bulk_create(
        [
            UsageDaily(
                day=day,
                user_id=user_id,
                api_key_id=key_id,
                model=model,
                **dict(zip(ROLLUP, s, strict=True)),
            )
            for (day, user_id, key_id, model), s in rollup.items()
        ],
        batch_size=BATCH,
    )
    QuotaLedger.objects.bulk_create(
        [
            QuotaLedger(
                api_key_id=key_id,
                period=Period.MONTH,
                period_start=month,
                spent_usd=spent,
                reserved_usd=Decimal("0.05"),
            )
            for key_id, spent in spend_this_month.items()
        ]
    )
    return {
        "staff": staff,
        "user": users[0],
        "fill_seconds": time.perf_counter() - started,
        "rollup_rows": len(rollup),
    }


COPY_COLUMNS = (
    "created_at", "user_id", "api_key_id", "key_prefix", "endpoint", "model", "response_model",
    "status_code", "stream", "prompt_tokens", "cached_tokens", "completion_tokens",
    "reasoning_tokens", "cost_usd", "latency_ms", "request_body", "response_body",
)  # fmt: skip
COPY_BATCH = 200_000
NULL = "\\N"
# Columns with a Django default but no database default, the same on every row: service_tier,
# error_code, cache_write / audio input / audio output tokens, estimated, client_disconnected,
# upstream_request_id, response_id.
COPY_COLUMNS += (
    "service_tier", "error_code", "cache_write_tokens", "audio_input_tokens",
    "audio_output_tokens", "estimated", "client_disconnected", "upstream_request_id",
    "response_id",
)  # fmt: skip
CONSTANTS = "\t\t\t0\t0\t0\tf\tf\t\t\n"


def _write(batch: list, copy: bool) -> int:
    """Insert one batch: UsageRecord objects by bulk_create, or TSV lines by COPY into the
    partitioned table (the columns not named take their database defaults)."""
    import io

    from django.db import connection, transaction

    from usage.models import UsageRecord

    with transaction.atomic():
        if not copy:
            UsageRecord.objects.bulk_create(batch)
            return len(batch)
        with connection.cursor() as cursor:
            cursor.cursor.copy_expert(
                f"COPY usage_usagerecord ({', '.join(COPY_COLUMNS)}) FROM STDIN",
                io.StringIO("".join(batch)),
            )
    return len(batch)


def check_rollup() -> str:
    """The rollup must add up to the records, or the dashboards would be fast and wrong."""
    from django.db.models import Count, Sum

    from usage.models import UsageDaily, UsageRecord

    fields = ("prompt_tokens", "completion_tokens")
    records = UsageRecord.objects.aggregate(n=Count("id"), **{f: Sum(f) for f in fields})
    daily = UsageDaily.objects.aggregate(n=Sum("requests"), **{f: Sum(f) for f in fields})
    return "rollup matches records" if records == daily else f"MISMATCH {records} vs {daily}"


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def time_pages(actors: dict[str, object], runs: int, warmup: int) -> list[tuple]:
    from django.test import Client
    from django.urls import Resolver404, resolve
    from django.utils import timezone

    from usage.models import UsageRecord

    user, staff = actors["user"], actors["staff"]
    today = timezone.now().date()
    last_90 = f"from={today - dt.timedelta(days=89)}&to={today}"
    last_30 = f"from={today - dt.timedelta(days=29)}&to={today}"
    last_7 = f"from={today - dt.timedelta(days=6)}&to={today}"
    record = UsageRecord.objects.filter(user=user).order_by("-created_at", "-id").first()
    pages = [
        ("user", "dashboard, user, last 30 days", "/dashboard/"),
        ("user", "dashboard, user, 90 days", f"/dashboard/?{last_90}"),
        ("staff", "dashboard, staff (everyone), 30 days", "/dashboard/"),
        ("staff", "dashboard, staff (everyone), 90 days", f"/dashboard/?{last_90}"),
        ("staff", "dashboard of a user, opened by staff", f"/dashboard/users/{user.username}/"),
        ("staff", "dashboard, staff, 7 days by hour", f"/dashboard/?{last_7}&group=hour"),
        ("user", "dashboard, user, 7 days by hour", f"/dashboard/?{last_7}&group=hour"),
        ("staff", "dashboard, staff, request log page 5", "/dashboard/?page=5"),
        (
            "staff",
            "dashboard, staff, log filtered (model, 5xx)",
            "/dashboard/?model=o4-mini&status=5xx&endpoint=chat/completions",
        ),
        ("staff", "dashboard, staff, log of one model", "/dashboard/?model=o4-mini"),
        ("staff", "dashboard, staff, log of one key", "/dashboard/?key=sk-proxy-031"),
        ("user", "request detail", f"/dashboard/requests/{record.pk}/"),
        ("user", "dashboard CSV by model, user", "/dashboard/usage.csv?group_by=model"),
        ("staff", "dashboard CSV by user, staff", "/dashboard/usage.csv?group_by=user"),
        ("staff", "API summary group_by=day, staff", "/api/usage/summary/?group_by=day"),
        ("staff", "API summary group_by=model, staff", "/api/usage/summary/?group_by=model"),
        ("staff", "API summary day, staff, 30 days", f"/api/usage/summary/?group_by=day&{last_30}"),
        ("user", "API summary group_by=day, user", "/api/usage/summary/?group_by=day"),
        ("user", "API summary group_by=model, user", "/api/usage/summary/?group_by=model"),
        ("staff", "API records, first page, staff", "/api/usage/"),
        ("user", "API records, first page, user", "/api/usage/"),
        ("staff", "admin usage list, first page", "/admin/usage/usagerecord/"),
        ("staff", "admin usage list, page 50", "/admin/usage/usagerecord/?p=50"),
        (
            "staff",
            "admin usage list, one user",
            f"/admin/usage/usagerecord/?username={user.username}",
        ),
        (
            "staff",
            "admin usage list, model + 5xx",
            "/admin/usage/usagerecord/?model=o4-mini&status=5xx",
        ),
        (
            "staff",
            "admin usage list, one day",
            f"/admin/usage/usagerecord/?created_at__year={today.year}"
            f"&created_at__month={today.month}&created_at__day={today.day}",
        ),
        (
            "staff",
            "admin usage list, search a key prefix",
            "/admin/usage/usagerecord/?q=sk-proxy-031",
        ),
        ("staff", "admin usage list, one key", "/admin/usage/usagerecord/?key=sk-proxy-031"),
        ("staff", "admin usage list, any error", "/admin/usage/usagerecord/?status=errors"),
        ("staff", "admin usage list, search a model", "/admin/usage/usagerecord/?q=o4-mini"),
        (
            "staff",
            "admin usage list, search an unknown id",
            "/admin/usage/usagerecord/?q=req_8f3a9c1d2b",
        ),
    ]
    # A host the settings allow (Client's own "testserver" is answered 400 DisallowedHost,
    # which this benchmark once timed as a fast page).
    clients = {"user": Client(HTTP_HOST="localhost"), "staff": Client(HTTP_HOST="localhost")}
    clients["user"].force_login(user)
    clients["staff"].force_login(staff)
    results = []
    for who, name, url in pages:
        try:
            resolve(url.split("?")[0])
        except Resolver404:
            results.append((name, url, None, None, None, "not built yet (URL does not resolve)"))
            continue
        client = clients[who]
        began = time.perf_counter()
        status = client.get(url).status_code
        first = (time.perf_counter() - began) * 1000
        for _ in range(warmup - 1):
            client.get(url)
        samples = []
        for _ in range(runs):
            began = time.perf_counter()
            answered = client.get(url).status_code
            samples.append((time.perf_counter() - began) * 1000)
            status = status if answered == status else f"{status} then {answered}"
        p50, p95 = percentile(samples, 50), percentile(samples, 95)
        results.append((name, url, first, p50, p95, status))
    return results


def kept_actors() -> dict[str, object]:
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    return {"staff": users.get(username="bench-staff"), "user": users.get(username="user00")}


def main() -> None:
    args = parse_args()
    keep = args.keep or args.reuse
    if keep:
        scratch_dir = str(ROOT / "bench" / "results")
        os.makedirs(scratch_dir, exist_ok=True)
    else:
        scratch_dir = tempfile.mkdtemp(prefix="usage-bench-")
    setup_django(args.database_url, scratch_dir)
    from django.db import connection
    from django.urls import get_resolver

    from usage.models import UsageDaily, UsageRecord

    get_resolver().url_patterns  # noqa: B018 (a broken URLconf should fail before the fill)
    print(f"Creating and migrating a scratch {connection.vendor} database…", file=sys.stderr)
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(
        verbosity=0, autoclobber=True, serialize=False, keepdb=args.reuse
    )
    try:
        if args.reuse and UsageRecord.objects.exists():
            actors = {**kept_actors(), "fill_seconds": None}
        else:
            actors = fill(args.records, args.seed)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
        consistency = check_rollup()
        count = UsageRecord.objects.count()
        rollup = UsageDaily.objects.count()
        results = time_pages(actors, args.runs, args.warmup)
        if connection.vendor == "sqlite":
            version = connection.Database.sqlite_version
        else:
            version = f"{connection.pg_version // 10000}.{connection.pg_version % 10000}"
    finally:
        if not keep:
            connection.creation.destroy_test_db(old_name, verbosity=0)
            shutil.rmtree(scratch_dir, ignore_errors=True)

    lines: list[str] = []
    kept = f" (kept: {connection.settings_dict['NAME']})" if keep else ""
    lines.append(f"command: {' '.join(['python', *sys.argv])}")
    lines.append(f"database: {connection.vendor} {version}{kept}")
    lines.append(
        f"records: {count:,}  rollup rows: {rollup:,}  users: {USERS}  keys: "
        f"{USERS * KEYS_PER_USER}  models: {len(MODELS)}  days: {DAYS}"
    )
    filled = "reused" if actors["fill_seconds"] is None else f"{actors['fill_seconds']:.0f} s"
    lines.append(f"fill: {filled}  check: {consistency}")
    lines.append(
        f"timed: {args.runs} warm runs per page after {args.warmup} warm-up; "
        f"normal user = {actors['user'].username} (the heaviest)"
    )
    lines.append(
        "first = the page's first request in this process: closed days not cached yet "
        "(the first row also loads templates and URLs)"
    )
    lines.append("")
    width = max(len(r[0]) for r in results)
    lines.append(f"{'page':<{width}}  {'first ms':>8}  {'p50 ms':>8}  {'p95 ms':>8}  status")
    lines.append(f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 8}  ------")
    slow = []
    for name, url, first, p50, p95, status in results:
        if p50 is None:
            lines.append(f"{name:<{width}}  {'—':>8}  {'—':>8}  {'—':>8}  {status}")
            continue
        lines.append(f"{name:<{width}}  {first:8.1f}  {p50:8.1f}  {p95:8.1f}  {status}")
        if status != 200:
            slow.append(f"{name} (answered {status}, not a page)")
        elif url.startswith(("/dashboard/", "/admin/")) or "/summary/" in url:
            if p95 >= 300:
                slow.append(name)
    lines.append("")
    verdict = "met" if not slow else f"MISSED by {slow}"
    lines.append(f"target p95 < 300 ms (dashboards, summary, admin usage list): {verdict}")
    text = "\n".join(lines)
    print()
    print(text)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = results_dir / f"usage_scale-{connection.vendor}-{count}-{stamp}.md"
    path.write_text(f"```\n{text}\n```\n")
    print(f"\nwritten to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
