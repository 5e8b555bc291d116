"""No proxy key and no upstream key in any log line: a filter on the log handlers (settings
LOGGING) that masks both in every record's message and traceback, whoever logged it (Django's
request logger writes a request's path, which in the key-in-URL form holds the key)."""

from __future__ import annotations

import logging
import re

from django.conf import settings

_PROXY_KEY = re.compile(r"sk-proxy-[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    if "sk-" not in text:  # the usual case: one substring test per line
        return text
    text = _PROXY_KEY.sub("sk-proxy-***", text)
    upstream_key = settings.OPENAI_API_KEY
    return text.replace(upstream_key, "sk-***") if upstream_key else text


class SecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a bad format string: the handler reports it)
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
