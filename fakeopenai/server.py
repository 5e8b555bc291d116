"""Serving the fake: `start_server` on the running loop (the management command), or
`FakeOpenAIThread` on a loop of its own (tests in the same process)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import TracebackType

from aiohttp import web
from aiohttp.log import access_logger

from fakeopenai.app import create_app
from fakeopenai.state import STATE, FakeState


async def start_server(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0, access_log: bool = False
) -> web.AppRunner:
    """Serve `app`; port 0 picks a free one (read it from `runner.addresses`)."""
    runner = web.AppRunner(
        app,
        # Cancel a handler as soon as its client hangs up, so open_streams drops at once
        # rather than at the next write, and a client that leaves during a wait or a stall
        # is billed `client_gone` while the handler waits, not never.
        handler_cancellation=True,
        # No per-request log line by default: the fake sits under a latency benchmark.
        access_log=access_logger if access_log else None,
        # A stream stalled "until the client leaves" must not hold a stop for aiohttp's 60 s.
        shutdown_timeout=2.0,
    )
    await runner.setup()
    # The proxy's backlog (uvicorn --backlog 4096): aiohttp's default of 128 drops the SYNs of
    # a burst of a thousand streams, which the client then retries a second later.
    await web.TCPSite(runner, host, port, reuse_address=True, backlog=4096).start()
    app[STATE].web_server = runner.server
    return runner


class FakeOpenAIThread:
    """The fake served from a background thread, for tests: `with FakeOpenAIThread() as fake:`
    then point OPENAI_BASE_URL at `fake.base_url`."""

    def __init__(
        self,
        *,
        key: str | None = None,
        admin_key: str | None = None,
        latency_ms: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        encodings_dir: str | Path | None = None,
    ) -> None:
        self.app = create_app(
            key=key, admin_key=admin_key, latency_ms=latency_ms, encodings_dir=encodings_dir
        )
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)

    @property
    def state(self) -> FakeState:
        return self.app[STATE]

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        try:
            runner = await start_server(self.app, host=self.host, port=self.port)
        except BaseException as error:  # noqa: BLE001 (handed to the starting thread, which re-raises)
            self._error = error
            self._ready.set()
            return
        self.port = runner.addresses[0][1]
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    def start(self) -> FakeOpenAIThread:
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeOpenAIThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
