"""WSGI entry for the admin, API and dashboards only; the relay needs ASGI (`manage.py serve`)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxyserver.settings")

application = get_wsgi_application()
