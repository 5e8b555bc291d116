"""Hourly rollups beside the daily one: totals per user × model × UTC hour (UsageHourly) and a
latency histogram per user × hour (UsageLatency), so the activity and latency charts no longer
read the records. Filled here from the records already kept (one grouped read of them, about
2 s a million here); records a process of the previous release writes while `migrate` runs
are missing from these two tables only (the daily rollup, budgets and reports have them)."""

import datetime as dt
from decimal import Decimal

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import keys.fields

# usage.models.LATENCY_BUCKETS_MS as this migration wrote them (a migration must not follow a
# later change of the model module).
LATENCY_BUCKETS_MS = (
    25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 7500,
    10000, 15000, 20000, 30000, 60000, 120000, 300000, 2**31 - 1,
)  # fmt: skip
# The most a money column holds (22 digits, 12 places). An hour's sum past it can only come
# from records near that bound themselves: kept at the bound, so `migrate` never fails on it
# (the daily rollup and the ledgers keep their own figures).
MONEY_MAX = Decimal("9999999999.999999999999")


def backfill(apps, schema_editor) -> None:  # noqa: ANN001 (migration signature)
    from django.db.models import Case, Count, IntegerField, Q, Sum, Value, When
    from django.db.models.functions import TruncHour

    Record = apps.get_model("usage", "UsageRecord")
    Hourly = apps.get_model("usage", "UsageHourly")
    Latency = apps.get_model("usage", "UsageLatency")
    done = Record.objects.exclude(state="pending").annotate(
        hour=TruncHour("created_at", tzinfo=dt.UTC)
    )
    totals: dict[tuple, dict] = {}
    for row in done.values("hour", "user_id", "model", "response_model").annotate(
        n=Count("id"),
        errors=Count("id", filter=Q(status_code__gte=400)),
        cost=Sum("cost_usd"),
        unpriced=Count("id", filter=Q(cost_usd__isnull=True, status_code__lt=400)),
    ):
        key = (row["hour"], row["user_id"], row["response_model"] or row["model"])
        total = totals.setdefault(
            key, {"requests": 0, "errors": 0, "cost_usd": Decimal(0), "unpriced_requests": 0}
        )
        total["requests"] += row["n"]
        total["errors"] += row["errors"]
        total["cost_usd"] += row["cost"] or Decimal(0)
        total["unpriced_requests"] += row["unpriced"]
    for total in totals.values():
        total["cost_usd"] = max(min(total["cost_usd"], MONEY_MAX), -MONEY_MAX)
    Hourly.objects.bulk_create(
        [Hourly(hour=h, user_id=u, model=m, **t) for (h, u, m), t in totals.items()],
        batch_size=5000,
    )
    bucket = Case(
        When(latency_ms__isnull=True, then=Value(-1)),
        *(When(latency_ms__lte=edge, then=Value(i)) for i, edge in enumerate(LATENCY_BUCKETS_MS)),
        default=Value(len(LATENCY_BUCKETS_MS) - 1),
        output_field=IntegerField(),
    )
    rows = done.annotate(bucket=bucket).values("hour", "user_id", "bucket").annotate(n=Count("id"))
    Latency.objects.bulk_create(
        [
            Latency(hour=r["hour"], user_id=r["user_id"], bucket=r["bucket"], requests=r["n"])
            for r in rows
        ],
        batch_size=5000,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0012_partition_usage_by_month"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="UsageHourly",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("hour", models.DateTimeField()),
                ("model", models.CharField(blank=True, max_length=120)),
                ("requests", models.BigIntegerField(default=0)),
                ("errors", models.BigIntegerField(default=0)),
                (
                    "cost_usd",
                    keys.fields.MoneyField(decimal_places=12, default=Decimal("0"), max_digits=22),
                ),
                ("unpriced_requests", models.BigIntegerField(default=0)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "usage by hour",
                "indexes": [models.Index(fields=["user", "hour"], name="usage_hourly_by_user")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("hour", "user", "model"), name="one_rollup_per_hour_user_model"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="UsageLatency",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("hour", models.DateTimeField()),
                ("bucket", models.SmallIntegerField()),
                ("requests", models.BigIntegerField(default=0)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "latency by hour",
                "indexes": [models.Index(fields=["user", "hour"], name="usage_latency_by_user")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("hour", "user", "bucket"), name="one_latency_bucket_per_hour_user"
                    )
                ],
            },
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
