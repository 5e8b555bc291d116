"""manage.py ensure_admin: the admin user from ADMIN_USERNAME / ADMIN_PASSWORD.

ADMIN_PASSWORD, when set, is the admin's password: the user is created with it, and an
existing one gets it again if it was changed (an operator who edits it in .env and restarts
expects the new one to work). To manage the password in the admin instead, leave
ADMIN_PASSWORD empty once the user exists. `--default-password` (for `make demo`) is only
used to create a missing user and never changes an existing one's password.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from proxyserver.commands import OneLineErrors


class Command(OneLineErrors, BaseCommand):
    help = (
        "Create the admin user named by ADMIN_USERNAME with ADMIN_PASSWORD if it does not exist; "
        "when ADMIN_PASSWORD is set, make it the existing admin's password too."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--default-password",
            default="",
            help="password for a new admin when ADMIN_PASSWORD is unset (never changes one)",
        )

    def handle(self, *args: object, **options: object) -> None:
        username = os.environ.get("ADMIN_USERNAME") or settings.ADMIN_USERNAME
        password = os.environ.get("ADMIN_PASSWORD") or settings.ADMIN_PASSWORD
        users = get_user_model().objects
        user = users.filter(username=username).first()
        if user is not None:
            if not password:
                self.stdout.write(f"admin user '{username}' exists")
            elif user.check_password(password):
                self.stdout.write(f"admin user '{username}' exists, password is ADMIN_PASSWORD")
            else:
                user.set_password(password)
                user.save(update_fields=["password"])
                self.stdout.write(
                    f"admin user '{username}' exists, password set from ADMIN_PASSWORD"
                )
            return
        password = password or str(options["default_password"])
        if not password:
            self.stdout.write(
                f"no admin user made: set ADMIN_PASSWORD (in .env) to create '{username}', "
                "or run `manage.py createsuperuser`"
            )
            return
        users.create_superuser(username=username, email="", password=password)
        self.stdout.write(f"admin user '{username}' created")
