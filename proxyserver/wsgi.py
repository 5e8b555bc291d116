"""WSGI entry for the admin, API and dashboards only; the relay needs ASGI (`manage.py serve`)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from proxyserver.secret_key import refuse_to_serve_with_a_guessable_key

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxyserver.settings")

application = get_wsgi_application()

# As proxyserver.asgi: with DEBUG off, a guessable key would let anyone forge sessions.
refuse_to_serve_with_a_guessable_key()
