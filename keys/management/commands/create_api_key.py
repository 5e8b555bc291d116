"""manage.py create_api_key USERNAME [limits]: issue a key; the key alone is the last line."""

from __future__ import annotations

import argparse
import datetime as dt
from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError, CommandParser

from keys.models import Period
from keys.services import key_issue
from proxyserver.commands import OneLineErrors, moment


def _budget(text: str) -> Decimal:
    # ArgumentTypeError, not CommandError: argparse turns it into its one-line error (a
    # CommandError raised while parsing would escape as a traceback on the command line).
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative amount in USD: {text!r}")
    return value


def _count(ceiling: int):  # noqa: ANN202 (an argparse type)
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not 0 <= value <= ceiling:
            # The column's range: past it PostgreSQL refuses the row (a traceback, before).
            raise argparse.ArgumentTypeError(f"must be between 0 and {ceiling:,}: {text!r}")
        return value

    return parse


_INT = _count(2**31 - 1)
_BIGINT = _count(2**63 - 1)


class Command(OneLineErrors, BaseCommand):
    help = "Create a proxy key for USERNAME (creating the user if needed) and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--budget", type=_budget, help="budget in USD per period")
        parser.add_argument("--period", choices=Period.values, default=Period.TOTAL)
        parser.add_argument(
            "--budget-mode",
            choices=["strict", "estimate"],
            default="",
            help="what the budget does with a request whose cost it cannot bound (default: "
            "the user's choice, else PROXY_BUDGET_MODE)",
        )
        parser.add_argument(
            "--models", default="", help="comma-separated allow-list (patterns like gpt-4o*)"
        )
        parser.add_argument("--rpm", type=_INT)
        parser.add_argument("--tpm", type=_INT)
        parser.add_argument("--max-concurrent", type=_INT)
        parser.add_argument("--tokens", type=_BIGINT, dest="token_limit", help="tokens per period")
        parser.add_argument(
            "--requests", type=_INT, dest="request_limit", help="requests per period"
        )
        parser.add_argument("--expires", help="expiry, ISO 8601 (e.g. 2027-01-31T00:00:00Z)")
        parser.add_argument("--name", default="")

    def handle(self, *args: object, **options: object) -> None:
        expires_at = None
        if options["expires"]:
            expires_at = moment(str(options["expires"]), "--expires", dates=False)
            # In UTC: Python takes offsets up to ±23:59, PostgreSQL only up to ±15:59.
            expires_at = expires_at.astimezone(dt.UTC)
            if expires_at <= dt.datetime.now(dt.UTC):
                raise CommandError(f"--expires is in the past: {options['expires']}")
        for flag in ("rpm", "tpm", "max_concurrent", "token_limit", "request_limit"):
            if options[flag] is not None and int(options[flag]) < 1:  # type: ignore[arg-type]
                raise CommandError(f"--{flag.replace('_', '-')} must be at least 1")
        api_key, secret = key_issue(
            username=str(options["username"]),
            name=str(options["name"]),
            expires_at=expires_at,
            budget_usd=options["budget"],
            period=options["period"],
            budget_mode=options["budget_mode"],
            allowed_models=str(options["models"]),
            rpm=options["rpm"],
            tpm=options["tpm"],
            max_concurrent=options["max_concurrent"],
            token_limit=options["token_limit"],
            request_limit=options["request_limit"],
        )
        self.stderr.write(f"Key {api_key.prefix}… for {api_key.user} — shown once, keep it now:")
        self.stdout.write(secret)
