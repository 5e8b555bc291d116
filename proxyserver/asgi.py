"""The ASGI application: the relay on a lean handler, everything else on Django's full stack.

Django wraps each sync middleware method in `sync_to_async` under ASGI, a thread hop each:
the session, auth, CSRF and messages middleware cost the relay several milliseconds a
request and give it nothing (it authenticates by proxy key). So `/v1/...` and the original
`/<key>/v1/...` paths go to a handler with no middleware, which also bounds bodies before
reading them, applies CORS (relay.cors) and answers a base_url without /v1 in OpenAI's shape;
the admin, API and dashboards keep the usual stack. WebSockets go to relay.realtime (the
Realtime API at /v1/realtime); any other WebSocket is refused before its handshake. A thin
wrapper also speaks the ASGI lifespan protocol, which Django does not: at startup the tiktoken
encodings are unpacked, at shutdown pending usage records are written and the upstream
connection pool is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
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
from django.utils import timezone

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxyserver.settings")
django.setup(set_prefix=False)

from proxyserver.secret_key import refuse_to_serve_with_a_guessable_key  # noqa: E402
from relay import errors  # noqa: E402 (after django.setup)
from relay.auth import authenticate_secret, secret_from  # noqa: E402
from relay.cors import CorsPolicy  # noqa: E402
from relay.streaming import RelayStreamingResponse  # noqa: E402

log = logging.getLogger(__name__)

# Before a single request: with DEBUG off, a guessable key would let anyone forge sessions.
refuse_to_serve_with_a_guessable_key()

# The relay's paths, and two mistakes answered here in OpenAI's shape rather than by Django's
# HTML 404 (and its request log line): an OpenAI path without /v1 (a base_url that lacks it)
# and a key-in-URL path without /v1 (whose path holds the key).
RELAY_PATH = re.compile(
    r"^/(?:v1/|sk-proxy-|(?:chat|completions|embeddings|responses|models|moderations|audio"
    r"|images|files|uploads|batches|fine_tuning|assistants|threads|vector_stores|conversations"
    r"|realtime|evals|containers|organization|proxy)(?:/|$))"
)
_V1_PATH = re.compile(r"^/(?:(sk-proxy-[A-Za-z0-9_-]+)/)?v1/")
_KEY_IN_PATH = re.compile(r"^/sk-proxy-[^/]*")


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

    # Read once: CORS is configured by settings, and off it must cost a request nothing.
    cors = CorsPolicy.from_settings()

    async def handle(self, scope: dict, receive, send) -> None:  # noqa: ANN001
        """Django's `handle`, reordered so that a body is bounded before it is read: the key
        is checked from the headers first (an unauthenticated request is answered with its
        body unread), a Content-Length over PROXY_MAX_BODY_BYTES is refused unread, and a
        chunked body is read into memory only up to the limit. Django's own `read_body` would
        spool the whole body, to a temporary file once it passes 2.5 MB, before anything."""
        if self.cors is not None:
            send = self.cors.wrap(scope, send)
            if self.cors.is_preflight(scope):
                await self._answer_unread(scope, send, self.cors.preflight(scope))
                return
        path = scope["path"]
        method = scope["method"]
        match = _V1_PATH.match(path)
        if match is None:
            await self._answer_unread(scope, send, _wrong_base_url(scope, method, path))
            return
        if method == "OPTIONS":
            # No key is asked of a browser's preflight (CORS on or off): it never sends one.
            await self._answer_unread(
                scope, send, errors.method_not_allowed(method, _masked(path)[:80])
            )
            return
        now = timezone.now()
        try:
            key = await authenticate_secret(
                secret_from(_header(scope, b"authorization").decode("latin-1"), match.group(1)),
                now,
            )
        except Exception:
            log.exception("relay authentication error")
            key = errors.proxy_error()
        if isinstance(key, HttpResponseBase):
            await self._answer_unread(scope, send, key)
            return
        try:
            body, too_large = await _read_bounded_body(scope, receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, io.BytesIO(body))
        if request is None:
            await self._answer_unread(scope, send, error_response)
            return
        # For the views (relay.views): the key, the time it was checked at, and whether the
        # body was left unread for its size (they answer 413 and record it).
        request.proxy_key = key
        request.received_at = now
        request.body_too_large = too_large
        if too_large:
            # The rest of the body is still on its way: no disconnect listener (it would read
            # it), and the connection is closed after the 413 rather than drained.
            response = await self.run_get_response(request)
            response["Connection"] = "close"
            try:
                await self.send_response(response, send)
            finally:
                _close_quietly(response)
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

    async def _answer_unread(self, scope: dict, send, response: HttpResponseBase) -> None:  # noqa: ANN001
        """Answer before the body was read; a body still to come closes the connection after
        the answer (uvicorn would otherwise read and discard it to keep the connection)."""
        if _header(scope, b"content-length") not in (b"", b"0") or _header(
            scope, b"transfer-encoding"
        ):
            response["Connection"] = "close"
        try:
            await self.send_response(response, send)
        finally:
            _close_quietly(response)


def _header(scope: dict, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


async def _read_bounded_body(scope: dict, receive) -> tuple[bytes, bool]:  # noqa: ANN001
    """(the body, in memory, False), or (b"", True) as soon as it is known to pass the limit:
    from its Content-Length before a byte is read, or once a chunked one passes it."""
    limit = settings.PROXY_MAX_BODY_BYTES
    declared = _header(scope, b"content-length")
    if declared and (not declared.isdigit() or int(declared) > limit):
        return b"", True
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return b"", True
            chunks.append(chunk)
        if not message.get("more_body", False):
            return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), False


def _masked(path: str) -> str:
    # A key-in-URL path is never repeated back whole: answers end up in logs and screenshots.
    return _KEY_IN_PATH.sub("/sk-proxy-***", path, count=1)


def _wrong_base_url(scope: dict, method: str, path: str) -> HttpResponseBase:
    host = _header(scope, b"host").decode("latin-1")
    if host and (settings.ALLOWED_HOSTS == ["*"] or _host_allowed(host)):
        root = f"{scope.get('scheme', 'http')}://{host}"
    else:
        root = "http://HOST:PORT"
    key_part = "<your proxy key>/" if _KEY_IN_PATH.match(path) else ""
    return errors.wrong_base_url(method, _masked(path)[:120], f"{root}/{key_part}v1")


def _host_allowed(host: str) -> bool:
    from django.http.request import split_domain_port, validate_host

    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


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
    elif scope["type"] == "websocket":
        await _websocket(scope, receive, send)
    elif scope["type"] != "lifespan":
        await django_application(scope, receive, send)
    else:
        await _lifespan(receive, send)


async def _websocket(scope: dict, receive, send) -> None:  # noqa: ANN001
    """The one WebSocket served: the Realtime API (relay.realtime). Any other is refused
    before its handshake in OpenAI's shape (Django's handler would raise on the scope)."""
    from relay import realtime

    path = scope["path"]
    match = _V1_PATH.match(path)
    if match is not None and path[match.end() :] == "realtime":
        await realtime.serve(scope, receive, send, match.group(1))
        return
    await realtime.refuse_handshake(
        scope,
        receive,
        send,
        errors.openai_error(
            404,
            f"Invalid URL (WebSocket {_masked(path)[:120]}): this proxy serves a WebSocket only "
            f"at /v1/realtime.",
            code="unknown_url",
        ),
    )


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
