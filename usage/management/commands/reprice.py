"""manage.py reprice --from D [--to D] [--model M] [--dry-run]: re-price past records."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError, CommandParser

from keys.money import usd
from proxyserver.commands import OneLineErrors, moment
from usage.repricing import records_reprice


def _when(text: str, flag: str) -> dt.datetime:
    """A date (midnight UTC) or an ISO 8601 date-time."""
    return moment(text, flag)


class Command(OneLineErrors, BaseCommand):
    help = (
        "Re-price the records of a period with the price table as it is now (after a price "
        "was corrected in the admin or by load_prices), moving the differences into the "
        "daily rollups and the keys' and users' budget ledgers, each record in the same "
        "transaction as its adjustments. --to is exclusive; a date means midnight UTC."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="since", required=True, metavar="DATE")
        parser.add_argument("--to", dest="until", metavar="DATE")
        parser.add_argument(
            "--model", help="only records of this model (asked, answered or priced as)"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="say what would change, change nothing"
        )

    def handle(self, *args: object, **options: object) -> None:
        since = _when(str(options["since"]), "--from")
        until = _when(str(options["until"]), "--to") if options["until"] else None
        if until is not None and until <= since:
            raise CommandError("--to must be after --from")
        result = records_reprice(
            since=since,
            until=until,
            model=options["model"] or None,  # type: ignore[arg-type]
            dry_run=bool(options["dry_run"]),
        )
        verb = "would change" if options["dry_run"] else "changed"
        self.stdout.write(
            f"{result.examined} records examined, {result.changed} {verb}, "
            f"{len(result.ledgers)} budget ledgers {'to adjust' if options['dry_run'] else 'adjusted'}"
        )
        for name, change in sorted(result.by_model.items()):
            extra = ""
            if change.became_unpriced:
                extra += f", {change.became_unpriced} now unpriced"
            if change.became_priced:
                extra += f", {change.became_priced} now priced"
            self.stdout.write(
                f"  {name}: {change.records} records, ${usd(change.before)} -> "
                f"${usd(change.after)} ({'+' if change.after >= change.before else '-'}"
                f"${usd(abs(change.after - change.before))}){extra}"
            )
        if result.changed:
            sign = "+" if result.delta >= 0 else "-"
            self.stdout.write(f"total: {sign}${usd(abs(result.delta))}")
