"""The audit trail: every change of a key, a user's limits, a user or a price — what changed,
by whom, when, and through what (the admin, the HTTP API, the dashboard, a command).

django-auditlog keeps one `LogEntry` per change, with the fields' old and new values, written
by its signal handlers on each save and delete of the registered models (browsable in the
admin: Audit log → Log entries). This module says which models and fields, and stamps each
entry with its author: the logged-in or API-authenticated user of the request that made it
(`AuditMiddleware`), or, for a `manage.py` command, the command and the operating-system user
that ran it (`via_command`, set by manage.py). The relay's own writes (records, ledgers) are
not audited: they are billing, written in bulk SQL, and never pass through here. Secrets
never enter the trail: a key's hash and a user's password hash are left out.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from django.http import HttpRequest, HttpResponse

_request: ContextVar[HttpRequest | None] = ContextVar("audit_request", default=None)
_command: ContextVar[str | None] = ContextVar("audit_command", default=None)

# model label -> fields left out of its entries
AUDITED: dict[str, list[str]] = {
    "keys.ApiKey": ["key_hash", "created_at"],
    "keys.UserLimit": [],
    "keys.Team": [],
    "keys.TeamMember": [],
    "auth.User": ["password", "last_login"],
    "usage.ModelPrice": [],
    "usage.ModelAlias": [],
    "usage.ToolPrice": [],
}


def register() -> None:
    from auditlog.models import LogEntry
    from auditlog.registry import auditlog
    from django.apps import apps
    from django.db.models.signals import pre_save

    for label, excluded in AUDITED.items():
        model = apps.get_model(label)
        if not auditlog.contains(model):
            auditlog.register(model, exclude_fields=excluded)
    pre_save.connect(_stamp, sender=LogEntry, dispatch_uid="audit-stamp")


def _via(request: HttpRequest) -> str:
    path = request.path
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith("/api/") or path.startswith("/create_api_key/"):
        return "api"
    return "dashboard"


def _stamp(sender: type, instance: Any, **kwargs: Any) -> None:
    """Who made this entry, and through what."""
    extra = dict(instance.additional_data or {})
    request = _request.get()
    if request is not None:
        user = getattr(request, "user", None)  # DRF replaces it once it authenticates
        if instance.actor_id is None and user is not None and user.is_authenticated:
            instance.actor = user
            instance.actor_email = getattr(user, "email", None) or None
        extra.setdefault("via", _via(request))
        instance.remote_addr = request.META.get("REMOTE_ADDR")  # uvicorn's peer, see login_lockout
    elif _command.get() is not None:
        extra.setdefault("via", f"manage.py {_command.get()}")
        extra.setdefault("os_user", _os_user())
    instance.additional_data = extra or None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (a container)
        return "unknown"


@contextlib.contextmanager
def via_command(name: str) -> Iterator[None]:
    """What the command changes is stamped as made by it (manage.py sets this)."""
    token = _command.set(name)
    try:
        yield
    finally:
        _command.reset(token)


class AuditMiddleware:
    """Keeps the request at hand for the entries its view writes (not on /v1, which is served
    without middleware: proxyserver.asgi)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)
