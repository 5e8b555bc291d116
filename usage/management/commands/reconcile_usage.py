"""manage.py reconcile_usage --from YYYY-MM-DD [--to YYYY-MM-DD]: the proxy's records held
against OpenAI's bill, per UTC day × model (usage.reconciliation), printed and stored.

Exit 0 when it compared, whatever it found (drift is a finding, not an error); 1 with one
line on standard error when it could not (no OPENAI_ADMIN_KEY, a refused key, OpenAI
unreachable, a bad date).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date

from keys.money import usd
from proxyserver.commands import OneLineErrors
from relay.org_usage import OrgUsageError, org_usage_fetch
from usage.models import ReconciliationRow
from usage.reconciliation import reconciliation_run

COLUMNS = (
    ("day", "<"),
    ("model", "<"),
    ("requests proxy/openai/diff", ">"),
    ("input tokens proxy/openai/diff", ">"),
    ("output tokens proxy/openai/diff", ">"),
    ("USD proxy/openai/diff", ">"),
    ("", "<"),
)


def _day(text: str | None, flag: str) -> dt.date | None:
    if text is None:
        return None
    try:
        day = parse_date(text) if len(text) == 10 else None
    except ValueError:  # well formed but no such day (2025-13-01)
        day = None
    if day is None:
        raise CommandError(f"{flag}: not a date (YYYY-MM-DD): {text!r}")
    return day


def _signed(value: int | None) -> str:
    return "—" if value is None else f"{value:+,}" if value else "0"


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _triple(proxy: int, openai: int | None, difference: int | None) -> str:
    return f"{_count(proxy)} / {_count(openai)} / {_signed(difference)}"


def table_lines(rows: list[ReconciliationRow]) -> list[str]:
    """The run's rows as a plain-text table, a `DRIFT` mark on rows that differ."""
    cells = [
        [
            str(row.day),
            row.model,
            _triple(row.proxy_requests, row.openai_requests, row.requests_difference),
            _triple(row.proxy_input_tokens, row.openai_input_tokens, row.input_tokens_difference),
            _triple(
                row.proxy_output_tokens, row.openai_output_tokens, row.output_tokens_difference
            ),
            f"{usd(row.proxy_usd)} / {usd(row.openai_usd)} / "
            f"{'+' if row.usd_difference > 0 else ''}{usd(row.usd_difference)}",
            "DRIFT" if row.drift else "",
        ]
        for row in rows
    ]
    header = [name for name, _ in COLUMNS]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(COLUMNS))]

    def line(values: list[str]) -> str:
        return "  ".join(
            f"{value:{align}{width}}"
            for value, (_, align), width in zip(values, COLUMNS, widths, strict=True)
        ).rstrip()

    return [line(header), "  ".join("-" * width for width in widths[:-1]), *map(line, cells)]


class Command(OneLineErrors, BaseCommand):
    help = (
        "Compare the proxy's usage records with OpenAI's organization Usage and Costs API "
        "(OPENAI_ADMIN_KEY) per UTC day and model: requests, tokens and USD. Prints the "
        "table and stores the run (shown on the staff dashboard). Exits 0 when it compared, "
        "drift or not; 1 when it could not."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        # Not required=True: argparse would answer a missing date with a usage banner, and
        # this command's failures are one line.
        parser.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first UTC day")
        parser.add_argument(
            "--to", dest="end", metavar="YYYY-MM-DD", help="last UTC day, included (default today)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        start = _day(options["start"], "--from")
        if start is None:
            raise CommandError("--from YYYY-MM-DD is required")
        end = _day(options["end"], "--to") or timezone.now().date()
        if end < start:
            raise CommandError(f"--to {end} is before --from {start}")
        try:
            run = reconciliation_run(start=start, end=end, fetch=org_usage_fetch)
        except OrgUsageError as error:
            raise CommandError(str(error)) from None
        rows = list(run.rows.all())
        self.stdout.write(f"Reconciliation {start} – {end} (UTC), run {run.pk}:")
        if rows:
            for text in table_lines(rows):
                self.stdout.write(text)
        else:
            self.stdout.write("No usage on either side.")
        drifting = sum(row.drift for row in rows)
        self.stdout.write(
            f"{drifting} of {len(rows)} day × model rows differ"
            + (" (differences are OpenAI's minus the proxy's)." if drifting else ".")
        )
