"""manage.py usage_partitions: the usage table's month partitions (PostgreSQL)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from proxyserver.commands import OneLineErrors, moment
from usage.partitions import (
    MONTHS_AHEAD,
    is_partitioned,
    month_start,
    partitions_ensure,
    partitions_list,
)


def _months(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CommandError(f"not a number of months: {text!r}") from None
    if not 0 <= value <= 120:
        raise CommandError("--ahead must be between 0 and 120 months")
    return value


class Command(OneLineErrors, BaseCommand):
    help = (
        "List the usage table's month partitions (PostgreSQL), and with --create make the "
        "partitions of this month and the --ahead next ones (and of --month) that are missing. "
        "Relay processes make the next months' themselves at start and hourly; a record whose "
        "month has no partition goes to the DEFAULT partition, and making its month later moves "
        "it there."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--create", action="store_true", help="make missing partitions")
        parser.add_argument(
            "--ahead", type=_months, default=MONTHS_AHEAD, help="months ahead (default %(default)s)"
        )
        parser.add_argument(
            "--month",
            action="append",
            default=[],
            type=lambda text: moment(text + "-01" if len(text) == 7 else text, "--month"),
            help="also make this month's (YYYY-MM); repeatable",
        )

    def handle(self, *args: object, **options: object) -> None:
        if not is_partitioned(connection):
            self.stdout.write(
                f"the usage table is not partitioned on {connection.vendor} (PostgreSQL only)"
            )
            return
        if options["create"]:
            made = partitions_ensure(ahead=int(str(options["ahead"])))
            made += partitions_ensure(months=[month_start(m) for m in options["month"]])
            self.stdout.write(
                f"made {len(made)} partitions" + (f": {', '.join(made)}" if made else "")
            )
        elif options["month"]:
            raise CommandError("--month needs --create")
        for partition in partitions_list():
            span = (
                "DEFAULT (records of months without a partition)"
                if partition.is_default
                else f"{partition.start:%Y-%m-%d} to {partition.end:%Y-%m-%d}"
            )
            rows = "not analysed yet" if partition.rows < 0 else f"about {partition.rows} records"
            self.stdout.write(f"{partition.name}  {span}  {rows}")
