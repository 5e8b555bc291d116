"""How the server's log lines look (settings LOGGING, chosen by LOG_FORMAT).

- `plain` (the default): `time LEVEL logger message`, and a request's fields (relay.request_log)
  after it as key=value, a value quoted as JSON when it holds a space, a quote or a control
  character, so a client's model name can never start a line of its own.
- `json`: one JSON object per line, for a log shipper: time, level, logger, message and a
  request's fields (a traceback as `exc_info`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re

import orjson

_BARE = re.compile(r"[A-Za-z0-9._:/{}@+\-]+")


def _plain(value: object) -> str:
    if value is None:
        return "-"
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is int:  # most of a request's fields: no pattern to match
        return str(value)
    text = str(value)
    return text if _BARE.fullmatch(text) else orjson.dumps(text).decode()


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "request", None)
        if not fields:
            return line
        return line + " " + " ".join(f"{name}={_plain(value)}" for name, value in fields.items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "request", None)
        if fields:
            entry.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()
