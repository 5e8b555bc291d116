"""manage.py load_prices [FILE]: refresh the price table from a price file."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from usage.services import SHIPPED_PRICES, prices_load


class Command(BaseCommand):
    help = (
        "Load model prices (USD per 1M tokens) from a CSV file, the shipped OpenAI price file "
        "by default. A changed price gets a new row effective now; history keeps the old one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", nargs="?", default=str(SHIPPED_PRICES))

    def handle(self, *args: object, **options: object) -> None:
        path = Path(str(options["file"]))
        if not path.exists():
            raise CommandError(f"no such price file: {path}")
        try:
            result = prices_load(path=path)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"prices from {path.name}: {result.created} new models, {result.changed} changed, "
            f"{result.unchanged} unchanged"
        )
