"""Serve the fake OpenAI upstream: `python manage.py fake_openai --port 8001`.

Point the proxy at it with OPENAI_BASE_URL=http://127.0.0.1:8001/v1 and
OPENAI_API_KEY=sk-fake-upstream (or whatever --key says). What it billed is at
http://127.0.0.1:8001/_fake/bills; the same bills as OpenAI's organization Usage and Costs
API (`fakeopenai.org_api`) with OPENAI_ADMIN_KEY=sk-admin-fake-upstream (or whatever
--admin-key says). It needs no database: it only serves.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from fakeopenai.app import DEFAULT_KEY, create_app
from fakeopenai.org_api import DEFAULT_ADMIN_KEY
from fakeopenai.server import start_server


class Command(BaseCommand):
    help = "Serve a fake OpenAI API (for tests, benchmarks and demos) on HOST:PORT/v1."
    # The fake needs no database or app checks, and must start while the project is mid-change.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument(
            "--key",
            default=os.environ.get("FAKE_OPENAI_KEY") or DEFAULT_KEY,
            help="the bearer key it accepts (default: $FAKE_OPENAI_KEY or %(default)s)",
        )
        parser.add_argument(
            "--admin-key",
            default=os.environ.get("FAKE_OPENAI_ADMIN_KEY") or DEFAULT_ADMIN_KEY,
            help="the admin key its organization Usage and Costs API accepts "
            "(default: $FAKE_OPENAI_ADMIN_KEY or %(default)s)",
        )
        parser.add_argument(
            "--latency-ms",
            type=float,
            default=0.0,
            help="sleep before every answer's headers unless a request's fake.latency_ms "
            "(alias headers_delay_ms) says otherwise",
        )
        parser.add_argument(
            "--access-log", action="store_true", help="log every request (off: it skews benchmarks)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        app = create_app(
            key=options["key"], admin_key=options["admin_key"], latency_ms=options["latency_ms"]
        )
        import uvloop  # as the proxy is served: an upstream that is not the benchmark's bottleneck

        uvloop.run(self._serve(app, options["host"], options["port"], options["access_log"]))

    async def _serve(self, app: Any, host: str, port: int, access_log: bool) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        runner = await start_server(app, host=host, port=port, access_log=access_log)
        try:
            bound_port = runner.addresses[0][1]
            # Scripts wait for this line (and read the port from it when --port 0).
            self.stdout.write(f"fake OpenAI listening on http://{host}:{bound_port}/v1")
            self.stdout.flush()
            await stop.wait()
        finally:
            await runner.cleanup()
        self.stdout.write("fake OpenAI stopped")
