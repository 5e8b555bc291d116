"""manage.py load_prices [FILE] [--aliases FILE] [--tools FILE]: refresh the price tables."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from proxyserver.commands import OneLineErrors
from usage.prices import (
    SHIPPED_ALIASES,
    SHIPPED_PRICES,
    SHIPPED_TOOL_PRICES,
    aliases_load,
    prices_load,
    tool_prices_load,
)


class Command(OneLineErrors, BaseCommand):
    help = (
        "Load model prices (USD per 1M tokens), the model-alias table and built-in tool fees "
        "from CSV files, the shipped OpenAI files by default. A changed price gets a new row "
        "effective now; history keeps the old one (see `reprice` to correct past records)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", nargs="?", default=str(SHIPPED_PRICES))
        parser.add_argument("--aliases", default=str(SHIPPED_ALIASES), metavar="FILE")
        parser.add_argument("--tools", default=str(SHIPPED_TOOL_PRICES), metavar="FILE")

    def handle(self, *args: object, **options: object) -> None:
        loads = (
            ("prices", options["file"], prices_load),
            ("aliases", options["aliases"], aliases_load),
            ("tool fees", options["tools"], tool_prices_load),
        )
        for label, name, load in loads:
            path = Path(str(name))
            if not path.exists():
                raise CommandError(f"no such {label} file: {path}")
            try:
                result = load(path=path)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"{label} from {path.name}: {result}")
