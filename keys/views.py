"""The original Flask proxy's key-issuing route, kept for its scripts."""

from __future__ import annotations

import base64
import binascii
import json

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from keys.models import ApiKey
from keys.services import key_issue


def _error(status: int, message: str, code: str) -> JsonResponse:
    return JsonResponse(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        },
        status=status,
    )


def _credentials(request: HttpRequest) -> tuple[str, str]:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic" and encoded:
        try:
            user, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
            return user, password
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
    fields: dict = request.POST.dict() if request.method == "POST" else request.GET.dict()
    if request.method == "POST" and request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
            fields = data if isinstance(data, dict) else {}
        except (ValueError, RecursionError):  # RecursionError: `[[[[…` nested too deeply
            fields = {}
    return str(fields.get("user") or fields.get("admin") or ""), str(fields.get("password") or "")


@csrf_exempt
def create_api_key_legacy(request: HttpRequest, username: str) -> JsonResponse:
    """POST /create_api_key/<username>: issue the user's one key, admin credentials required."""
    if request.method == "GET" and not settings.LEGACY_CREATE_KEY_GET:
        return _error(
            405,
            "Creating keys with GET (password in the URL, where logs keep it) is disabled. "
            "POST to this URL with the admin credentials as HTTP Basic auth or as 'user' and "
            "'password' fields, or set LEGACY_CREATE_KEY_GET=true to allow the old form.",
            "method_not_allowed",
        )
    if request.method not in ("GET", "POST"):
        return _error(405, "Use POST.", "method_not_allowed")
    user, password = _credentials(request)
    # A NUL is no one's name or password, and PostgreSQL refuses it in a query (a 500).
    usable = user and password and "\x00" not in user + password
    admin = authenticate(request, username=user, password=password) if usable else None
    if admin is None or not admin.is_staff:
        return _error(401, "Admin credentials are missing or wrong.", "invalid_admin_credentials")
    # The checks the user form makes: an unchecked name (a NUL, 151 characters) was a
    # database error on PostgreSQL.
    try:
        UnicodeUsernameValidator()(username)
        MaxLengthValidator(150)(username)
    except ValidationError as exc:
        return _error(400, f"Not a valid username: {exc.messages[0]}", "invalid_username")
    now = timezone.now()
    active = [
        k
        for k in ApiKey.objects.filter(user__username=username, revoked_at__isnull=True)
        if k.is_active(now)
    ]
    if active:
        return _error(
            409,
            f"User '{username}' already has an active key (only one per username by this route). "
            "Revoke it first, or issue more keys in the admin or with POST /api/keys/.",
            "key_exists",
        )
    api_key, secret = key_issue(username=username, name="created by /create_api_key")
    return JsonResponse(
        {
            "username": username,
            "key": secret,
            "api_key": secret,
            "id": api_key.pk,
            "prefix": api_key.prefix,
        },
        status=201,
    )
