"""manage.py prune_usage: drop usage records and stored bodies past their retention period."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from proxyserver.commands import OneLineErrors
from usage.models import UsageRecord
from usage.partitions import partition_drop, partition_pending, partitions_list

BATCH_SIZE = 5_000


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CommandError(f"not a number of days: {text!r}") from None
    if value < 0:
        raise CommandError("days must not be negative")
    return value


def _batch_bound(rows: QuerySet[UsageRecord], batch_size: int) -> int | None:
    """The largest id of the next `batch_size` matching rows, oldest ids first.

    Each batch is then one `… WHERE <condition> AND id <= bound` statement: no list of
    thousands of ids as parameters, and a short transaction per batch, so a server writing
    records meanwhile waits at most one batch for its lock (SQLite) or not at all (PostgreSQL).
    """
    ids = rows.order_by("id").values_list("id", flat=True)[batch_size - 1 : batch_size]
    bound = next(iter(ids), None)
    if bound is None:
        bound = rows.order_by("-id").values_list("id", flat=True).first()
    return bound


class Command(OneLineErrors, BaseCommand):
    help = (
        "Delete usage records older than USAGE_RETENTION_DAYS (0 keeps them forever; --days "
        "overrides) and blank the request/response bodies of records older than "
        "USAGE_BODY_RETENTION_DAYS (0 keeps them; --body-days overrides). Works in batches, each "
        "its own short transaction, so it is safe to run while the server is writing. The "
        "per-day rollups (usage by day: requests, tokens, cost) are kept, so reports and "
        "dashboards still show the totals of pruned days; key and user ledgers are untouched. "
        "On PostgreSQL a month wholly before the cutoff goes as one partition (DETACH + DROP), "
        "unless it holds a pending record: then its other rows are deleted as above."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=_days, help="keep records this many days (0 = forever)")
        parser.add_argument(
            "--body-days", type=_days, help="keep bodies this many days (0 = forever)"
        )
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
        parser.add_argument("--dry-run", action="store_true", help="only print what would go")

    def handle(self, *args: object, **options: object) -> None:
        now = timezone.now()
        days = options["days"] if options["days"] is not None else settings.USAGE_RETENTION_DAYS
        body_days = (
            options["body_days"]
            if options["body_days"] is not None
            else settings.USAGE_BODY_RETENTION_DAYS
        )
        batch_size = int(str(options["batch_size"]))
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        dry_run = bool(options["dry_run"])

        cutoff = now - dt.timedelta(days=days) if days else None
        if cutoff is not None:
            # Never a pending row: its reservation would be held with nothing left to end it.
            old = UsageRecord.objects.completed().filter(created_at__lt=cutoff)
            if dry_run:
                for partition in self._expired_months(cutoff):
                    if partition_pending(partition=partition):
                        self.stdout.write(f"would keep the partition {partition.name} (pending)")
                    else:
                        self.stdout.write(f"would drop the partition {partition.name}")
                self.stdout.write(
                    f"would delete {old.count()} usage records "
                    f"from before {cutoff:%Y-%m-%d %H:%M} UTC"
                )
            else:
                deleted = self._drop_months(cutoff) + self._delete(old, batch_size)
                self.stdout.write(
                    f"deleted {deleted} usage records from before {cutoff:%Y-%m-%d %H:%M} UTC"
                )
        else:
            self.stdout.write("usage records are kept forever (USAGE_RETENTION_DAYS=0)")

        if body_days:
            body_cutoff = now - dt.timedelta(days=body_days)
            with_bodies = UsageRecord.objects.filter(created_at__lt=body_cutoff).filter(
                ~Q(request_body="") | ~Q(response_body="")
            )
            if cutoff is not None:
                with_bodies = with_bodies.filter(created_at__gte=cutoff)  # the rest are deleted
            if dry_run:
                self.stdout.write(
                    f"would blank the bodies of {with_bodies.count()} usage records from before "
                    f"{body_cutoff:%Y-%m-%d %H:%M} UTC"
                )
            else:
                blanked = self._blank(with_bodies, batch_size)
                self.stdout.write(
                    f"blanked the bodies of {blanked} usage records from before "
                    f"{body_cutoff:%Y-%m-%d %H:%M} UTC"
                )
        else:
            self.stdout.write("request and response bodies are kept (USAGE_BODY_RETENTION_DAYS=0)")

    def _expired_months(self, cutoff: dt.datetime) -> list:
        return [p for p in partitions_list() if p.end is not None and p.end <= cutoff]

    def _drop_months(self, cutoff: dt.datetime) -> int:
        """Whole months before the cutoff, a partition each: no row-by-row delete, no bloat
        left for VACUUM. (The partly expired month, and the DEFAULT partition, go row by row.)"""
        total = 0
        for partition in self._expired_months(cutoff):
            try:
                rows = partition_drop(partition=partition)
            except OperationalError as exc:  # lock_timeout: writers come first, try next run
                self.stdout.write(f"could not drop the partition {partition.name} now ({exc})")
                continue
            if rows is None:
                self.stdout.write(
                    f"kept the partition {partition.name}: it holds a pending record "
                    "(its other records are deleted one by one)"
                )
                continue
            self.stdout.write(f"dropped the partition {partition.name} ({rows} records)")
            total += rows
        return total

    def _delete(self, rows: QuerySet[UsageRecord], batch_size: int) -> int:
        total = 0
        while (bound := _batch_bound(rows, batch_size)) is not None:
            with transaction.atomic():
                # Rollups (UsageDaily) are separate rows: deleting records leaves them as they are.
                deleted, _ = rows.filter(id__lte=bound).delete()
            total += deleted
        return total

    def _blank(self, rows: QuerySet[UsageRecord], batch_size: int) -> int:
        total = 0
        while (bound := _batch_bound(rows, batch_size)) is not None:
            with transaction.atomic():
                total += rows.filter(id__lte=bound).update(request_body="", response_body="")
        return total
