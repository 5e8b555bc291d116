"""The proxy's ASGI app, started at another date (TRAVEL_TO, ISO 8601) for period tests.

Only tests use this: time_machine moves the server process's clock before Django loads.
"""

from __future__ import annotations

import datetime as dt
import os

import time_machine

time_machine.travel(dt.datetime.fromisoformat(os.environ["TRAVEL_TO"]), tick=True).start()

from proxyserver.asgi import application  # noqa: E402

__all__ = ["application"]
