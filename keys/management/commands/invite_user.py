"""manage.py invite_user USERNAME [--email ADDRESS] [--max-keys N]: a one-time link for the
user to set a password (emailed when they have an address); the link alone is the last line."""

from __future__ import annotations

import argparse

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandParser
from django.core.validators import validate_email

from keys.selfservice import user_invite, user_max_keys_set
from proxyserver.commands import OneLineErrors


def _email(text: str) -> str:
    try:
        validate_email(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"not an email address: {text!r}") from None
    return text


def _keys(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 1000: {text!r}")
    return int(text)


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must start with http:// or https://: {text!r}")
    return text


class Command(OneLineErrors, BaseCommand):
    help = (
        "Invite USERNAME (made if new): print a one-time link to set a password, and email it "
        "when the user has an address."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", type=_email, default=None, help="the user's email address")
        parser.add_argument(
            "--max-keys",
            type=_keys,
            default=None,
            help="let the user make their own keys, up to this many active ones",
        )
        parser.add_argument(
            "--base-url",
            type=_url,
            default=settings.PROXY_PUBLIC_URL,
            help="the address users reach the proxy at (default PROXY_PUBLIC_URL)",
        )

    def handle(self, *args: object, **options: object) -> None:
        invitation = user_invite(
            username=str(options["username"]),
            email=str(options["email"] or ""),
            base_url=str(options["base_url"]),
        )
        if options["max_keys"] is not None:
            user = get_user_model().objects.get(username=invitation.username)
            user_max_keys_set(user=user, max_keys=options["max_keys"])
        if invitation.emailed_to:
            self.stderr.write(f"emailed to {invitation.emailed_to}")
        self.stdout.write(invitation.link)
