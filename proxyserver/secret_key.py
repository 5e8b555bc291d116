"""The session-signing key: one per installation, never a guessable one in production.

Settings take `SECRET_KEY` from the environment, or else from `SECRET_KEY_FILE` (made on first
use), so that every worker and every restart of one installation signs with the same key:
a key invented per process logs a user out whenever their next request lands on another
worker. The servers (`proxyserver.asgi`, `proxyserver.wsgi`, `manage.py serve`) refuse to
start with `DEBUG=false` and a key anyone could guess.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

# What sample.env has shipped: copied into a .env unedited, it is public knowledge.
SAMPLE_SECRET_KEYS = frozenset({"change-me-to-a-long-random-string"})
PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me")
# Exit status uvicorn reads as "failed before serving": its supervisor then stops instead of
# starting the worker again and again (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE = 3


def secret_key_from_file(path: Path) -> str:
    """The key stored in `path`, written there first (mode 0600) if there is none yet.

    Several workers start at the same moment: each writes a whole key into a temporary file
    and hard-links it into place, which fails for all but the first, so every one of them
    reads the first one's key, never half a file.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=".secret-key-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as file:
                file.write(get_random_secret_key() + "\n")
            try:
                os.link(scratch, path)
            except FileExistsError:
                pass  # another process was first: its key is the installation's
        finally:
            os.unlink(scratch)
        return path.read_text().strip()
    except OSError as exc:
        raise ImproperlyConfigured(
            f"SECRET_KEY is not set and {path} cannot be written ({exc.strerror}): "
            "set SECRET_KEY, or SECRET_KEY_FILE to a writable path"
        ) from exc


def secret_key_weakness(key: str) -> str | None:
    """What makes `key` guessable, or None. Beyond the sample values, the same rules as
    Django's security.W009 (`check --deploy`), so a key the server accepts passes the check."""
    if key in SAMPLE_SECRET_KEYS or any(word in key.lower() for word in PLACEHOLDER_WORDS):
        return "is the placeholder from sample.env"
    if key.startswith(SECRET_KEY_INSECURE_PREFIX):
        return f"is a development key ({SECRET_KEY_INSECURE_PREFIX}…)"
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return f"has {len(key)} characters (at least {SECRET_KEY_MIN_LENGTH} are needed)"
    if len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return f"has fewer than {SECRET_KEY_MIN_UNIQUE_CHARACTERS} different characters"
    return None


def secret_key_refusal() -> str | None:
    """The one line a server prints before it refuses to start, or None when it may start:
    with DEBUG on anything goes, with DEBUG off the key must not be guessable."""
    from django.conf import settings

    if settings.DEBUG:
        return None
    weakness = secret_key_weakness(settings.SECRET_KEY)
    if weakness is None:
        return None
    where = (
        "SECRET_KEY" if os.environ.get("SECRET_KEY") else f"the key in {settings.SECRET_KEY_FILE}"
    )
    return (
        f"refusing to start with DEBUG=false: {where} {weakness}. Set SECRET_KEY to "
        f'{SECRET_KEY_MIN_LENGTH}+ random characters (python -c "import secrets; '
        'print(secrets.token_urlsafe(50))"), or leave it unset to use a key generated once '
        "into SECRET_KEY_FILE (default var/secret-key)."
    )


def refuse_to_serve_with_a_guessable_key() -> None:
    """Exit, printing one line and no traceback, when `secret_key_refusal` says so."""
    refusal = secret_key_refusal()
    if refusal is not None:
        sys.stderr.write(refusal + "\n")
        raise SystemExit(STARTUP_FAILURE)
