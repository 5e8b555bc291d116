"""manage.py reap_reservations: end what crashed relay processes left reserved.

Every relay process runs this reaper by itself every few seconds; the command is for when no
relay runs (after a crash of the only process) or from a cron job, to be sure.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from keys.money import usd
from proxyserver.commands import OneLineErrors
from usage.services import reservations_heal


class Command(OneLineErrors, BaseCommand):
    help = (
        "End the reservations of relay processes not seen for --stale-seconds (killed, OOM): "
        "each becomes a record billed at its prompt's estimate, the rest of the budget released."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stale-seconds",
            type=float,
            default=settings.PROXY_REAP_AFTER_SECONDS,
            help="a process not seen for this long is taken for dead (default: "
            "PROXY_REAP_AFTER_SECONDS, %(default)s)",
        )

    def handle(self, *args: object, **options: object) -> None:
        result = reservations_heal(
            stale_after=dt.timedelta(seconds=float(options["stale_seconds"]))
        )
        self.stdout.write(
            f"ended {result.records} reservations of dead relay processes: "
            f"billed ${usd(result.billed_usd)} as estimates, released ${usd(result.released_usd)}"
        )
