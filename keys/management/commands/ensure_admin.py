"""manage.py ensure_admin: create the admin user from ADMIN_USERNAME / ADMIN_PASSWORD if missing."""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create the admin user named by ADMIN_USERNAME with ADMIN_PASSWORD, if it does not exist."
    )

    def handle(self, *args: object, **options: object) -> None:
        username = os.environ.get("ADMIN_USERNAME") or settings.ADMIN_USERNAME
        password = os.environ.get("ADMIN_PASSWORD") or settings.ADMIN_PASSWORD
        users = get_user_model().objects
        if users.filter(username=username).exists():
            self.stdout.write(f"admin user '{username}' exists")
            return
        if not password:
            self.stdout.write(
                f"no admin user made: set ADMIN_PASSWORD (in .env) to create '{username}', "
                "or run `manage.py createsuperuser`"
            )
            return
        users.create_superuser(username=username, email="", password=password)
        self.stdout.write(f"admin user '{username}' created")
