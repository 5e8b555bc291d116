"""The ASGI application: the relay on a lean handler, everything else on Django's full stack.

Django wraps each sync middleware method in `sync_to_async` under ASGI, a thread hop each:
the session, auth, CSRF and messages middleware cost the relay several milliseconds a
request and give it nothing (it authenticates by proxy key). So `/v1/...` and the original
`/<key>/v1/...` paths go to a handler with no middleware; the admin, API and dashboards keep
the usual stack. A thin wrapper also speaks the ASGI lifespan protocol, which Django does
not: at startup the tiktoken encodings are unpacked, at shutdown pending usage records are
written and the upstream connection pool is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re

import django
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import Http404, HttpRequest, HttpResponseBase
from django.urls import set_script_prefix, set_urlconf

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxyserver.settings")
django.setup(set_prefix=False)

from relay import errors  # noqa: E402 (after django.setup)
from relay.streaming import RelayStreamingResponse  # noqa: E402

log = logging.getLogger(__name__)

RELAY_PATH = re.compile(r"^/(?:sk-proxy-[A-Za-z0-9_-]+/)?v1/")


class RelayHandler(ASGIHandler):
    """Django's ASGI handler with no middleware and no thread hop of its own.

    `handle` follows Django 5.2's, less what costs a thread per request: the request_started
    signal (its receivers reset query logs and close DB connections of the request thread;
    relay views have none, their queries run in executor threads that keep a connection) and
    `sync_to_async(response.close)` (our responses hold no file, closing them is instant).
    `get_response_async` leaves out Django's log line for every 4xx/5xx: it costs a thread hop
    and writes the request path, which in the original URL form holds the user's proxy key.
    Measured on this machine, the three hops were a third of the relay's own time per request
    (bench/relay_latency.py); relay/tests/test_faults.py fails if Django changes under them.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._guarded)

    async def _guarded(self, request: HttpRequest) -> HttpResponseBase:
        # The relay views answer every error themselves; this is the net under them, and it
        # logs no path (a path can hold a proxy key).
        try:
            return await self._get_response_async(request)
        except Http404:
            return errors.not_found(request.path.partition("/v1/")[2][:64])
        except Exception:
            log.exception("relay handler error")
            return errors.proxy_error()

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._middleware_chain(request)
        response._resource_closers.append(request.close)
        return response

    async def handle(self, scope: dict, receive, send) -> None:  # noqa: ANN001
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        made: list[HttpResponseBase] = []

        async def process_request() -> HttpResponseBase:
            response = await self.run_get_response(request)
            made.append(response)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client left while we were sending
            return response

        # As Django does: a client that disconnects cancels the view (a relayed stream then
        # closes its upstream connection and is recorded as such).
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done():
                    with contextlib.suppress(RequestAborted):
                        task.result()
                else:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            # Whatever happened above (a send that raised included), a relayed stream never
            # sent or not read to the end is recorded here: one never started has no
            # generator to do it (a no-op for one that ended).
            for response in made:
                if isinstance(response, RelayStreamingResponse):
                    response.abandon()
                _close_quietly(response)
        body_file.close()


def _close_quietly(response: HttpResponseBase) -> None:
    """`response.close()` without its request_finished signal, whose receivers (closing DB
    connections and caches of the request thread, which the relay never uses) took a tenth
    of the relay's time on the event loop."""
    for closer in response._resource_closers:
        with contextlib.suppress(Exception):
            closer()
    response._resource_closers.clear()
    response.closed = True


django_application = ASGIHandler()
relay_application = RelayHandler()


async def application(scope: dict, receive, send) -> None:  # noqa: ANN001 (ASGI callables)
    if scope["type"] == "http" and RELAY_PATH.match(scope["path"]):
        await relay_application(scope, receive, send)
    elif scope["type"] != "lifespan":
        await django_application(scope, receive, send)
    else:
        await _lifespan(receive, send)


async def _lifespan(receive, send) -> None:  # noqa: ANN001
    from relay import lifecycle

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await lifecycle.startup()
            except Exception as exc:  # noqa: BLE001 (reported to the server, which exits)
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await lifecycle.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
