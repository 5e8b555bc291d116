"""What the project's `manage.py` commands share: bad input is one line, never a traceback.

- `OneLineErrors`: a bad or missing argument is one line on stderr and exit status 2
  ("manage.py create_api_key: argument --budget: not an amount in USD: 'abc' (see --help)"),
  not argparse's usage block.
- `moment`: a date (midnight UTC) or an ISO 8601 date-time, with an impossible one
  (2026-02-30) named, not raised from deep in the date parser.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime


class OneLineErrors:
    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)  # type: ignore[misc]

        def error(message: str) -> None:
            if parser.called_from_command_line:
                parser.exit(2, f"{parser.prog}: {message} (see --help)\n")
            raise CommandError(f"Error: {message}")

        parser.error = error  # type: ignore[method-assign]
        return parser


def moment(text: str, flag: str, *, dates: bool = True) -> dt.datetime:
    """`text` as an aware date-time (UTC when it names no offset); `dates`: a bare date means
    its midnight UTC. Raises CommandError naming `flag`."""
    what = "a date (YYYY-MM-DD) or an ISO 8601 date-time" if dates else "an ISO 8601 date-time"
    try:
        when = parse_datetime(text)
        if when is None and dates and len(text) == 10:
            day = parse_date(text)
            when = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) if day else None
    except ValueError as exc:  # well-formed but impossible: 2026-02-30, 25:00
        raise CommandError(f"{flag}: not a real date: {text!r} ({exc})") from None
    if when is None:
        raise CommandError(f"{flag}: not {what}: {text!r}")
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
