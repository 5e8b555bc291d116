"""The one place that talks to OpenAI: a pooled aiohttp session per process.

Measured here, aiohttp relays about five times the requests per core that httpx does and
keeps thousands of open streams without stalling, hence one long-lived ClientSession.

The pool holds PROXY_UPSTREAM_MAX_CONNECTIONS connections. When all are in use (long
streams), a request waits in line for one for up to PROXY_UPSTREAM_QUEUE_SECONDS and is then
answered 503 `upstream_busy` (the SDKs retry it). The wait is not part of the connect
timeout, which bounds only opening a connection: aiohttp's own `connect` timeout counts the
wait for the pool too, so a busy pool used to fail requests that were never sent as 504s.
"""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import aiohttp
from django.conf import settings

from relay import identifiers

# Headers a client may pass to OpenAI. Anything else (its Authorization above all, and
# OpenAI-Organization / OpenAI-Project, which would pick another account) is dropped.
FORWARDED_REQUEST_HEADERS = (
    "content-type",
    "accept",
    "user-agent",
    "openai-beta",
    "idempotency-key",
)
# Headers relayed back. x-ratelimit-* describe the shared organisation, not the user: dropped.
RELAYED_RESPONSE_HEADERS = (
    "content-type",
    "x-request-id",
    "openai-processing-ms",
    "openai-version",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
)

_session: aiohttp.ClientSession | None = None
# OPENAI_API_KEY as sample.env ships it: a .env copied and never edited.
SAMPLE_KEY_PLACEHOLDER = "sk-your-real-openai-key"


class PoolBusy(Exception):
    """No upstream connection came free within PROXY_UPSTREAM_QUEUE_SECONDS."""


class _Queueing:
    """One request's wait for a pooled connection, bounded from the moment it starts
    waiting (aiohttp tells through its trace signals) until it has a connection."""

    __slots__ = ("timeout",)

    def __init__(self, timeout: asyncio.Timeout) -> None:
        self.timeout = timeout


async def _queued(_session: object, trace: SimpleNamespace, _params: object) -> None:
    waiting: _Queueing | None = trace.trace_request_ctx
    if waiting is not None:
        waiting.timeout.reschedule(
            asyncio.get_running_loop().time() + settings.PROXY_UPSTREAM_QUEUE_SECONDS
        )


async def _dequeued(_session: object, trace: SimpleNamespace, _params: object) -> None:
    waiting: _Queueing | None = trace.trace_request_ctx
    if waiting is not None:
        waiting.timeout.reschedule(None)


def _trace_config() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_connection_queued_start.append(_queued)
    trace.on_connection_queued_end.append(_dequeued)
    return trace


def session() -> aiohttp.ClientSession:
    """The process's session, made on first use inside the server's event loop."""
    global _session
    if _session is None or _session.closed or _session._loop is not asyncio.get_running_loop():
        connector = aiohttp.TCPConnector(
            limit=settings.PROXY_UPSTREAM_MAX_CONNECTIONS,
            limit_per_host=settings.PROXY_UPSTREAM_MAX_CONNECTIONS,
            ttl_dns_cache=300,
            keepalive_timeout=60,
        )
        _session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=None,  # it would count the wait for the pool (bounded above)
                sock_connect=settings.PROXY_UPSTREAM_CONNECT_TIMEOUT,
                sock_read=settings.PROXY_UPSTREAM_READ_TIMEOUT,
            ),
            trace_configs=[_trace_config()],
            # Bodies are parsed for usage, so let aiohttp decompress; the relayed response then
            # drops content-encoding and content-length.
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
    return _session


async def close() -> None:
    global _session
    if _session is not None and not _session.closed:
        await _session.close()
    _session = None


def upstream_headers(request_headers: dict[str, str], user_id: int) -> dict[str, str]:
    headers = {}
    for name, value in request_headers.items():
        lower = name.lower()
        if lower in FORWARDED_REQUEST_HEADERS:
            # One upstream account for every user: a client's idempotency key is made the
            # user's own, so that two tenants sending the same key never share an answer.
            headers[name] = (
                identifiers.idempotency_key(user_id, value) if lower == "idempotency-key" else value
            )
    headers["Authorization"] = f"Bearer {settings.OPENAI_API_KEY}"
    return headers


def upstream_key_problem(key: str) -> str | None:
    """What is wrong with `key` as the upstream key, saying what to set; None if nothing we
    can tell without asking OpenAI (`models_check` asks)."""
    if not key.strip():
        return (
            "OPENAI_API_KEY is not set: every relayed request will fail until it is; "
            "set it in .env (see sample.env) or the environment to your OpenAI key"
        )
    if key.strip() == SAMPLE_KEY_PLACEHOLDER:
        return (
            "OPENAI_API_KEY is sample.env's placeholder: every relayed request will fail "
            "until it is your OpenAI key; set it in .env or the environment"
        )
    return None


async def models_check(*, timeout: float) -> str:
    """Whether OpenAI answers `GET /models` with the upstream key: "ok" or "error: ..." (for
    /readyz with READYZ_CHECK_UPSTREAM; never the key itself)."""
    headers = {"Authorization": f"Bearer {settings.OPENAI_API_KEY}"}
    try:
        async with asyncio.timeout(timeout):
            response = await open_request("GET", "models", headers=headers, body=None)
            response.release()
    except PoolBusy:
        return "error: no upstream connection came free"
    except TimeoutError:
        return f"error: no answer from {settings.OPENAI_BASE_URL} in {timeout:g} s"
    except (aiohttp.ClientError, OSError) as exc:
        return f"error: {settings.OPENAI_BASE_URL} unreachable ({type(exc).__name__})"
    if response.status == 200:
        return "ok"
    if response.status in (401, 403):
        return f"error: upstream answered {response.status}: it refuses OPENAI_API_KEY"
    return f"error: upstream answered {response.status} to GET /models"


# Segments of an upstream path: never empty nor a dot segment, which the HTTP client would
# normalise into another route (`models/..` is `GET /v1/`), sent with the operator's key.
_SEGMENT = re.compile(r"[A-Za-z0-9_:\-][A-Za-z0-9._:\-]*|\.[A-Za-z0-9._:\-]*[A-Za-z0-9_:\-]")


def url_for(path: str) -> str:
    """The upstream URL of `path`, which comes from the relay's route table; one that could
    leave the route it names raises ValueError rather than being sent."""
    if not all(
        _SEGMENT.fullmatch(segment) and segment not in (".", "..") for segment in path.split("/")
    ):
        raise ValueError("refusing an upstream path that is not a plain route")
    return f"{settings.OPENAI_BASE_URL}/{path}"


async def open_request(
    method: str, path: str, *, headers: dict[str, str], body: bytes | None, query: str = ""
) -> aiohttp.ClientResponse:
    """Send a request; the caller reads and releases the response (streams outlive this call).
    Raises PoolBusy when no connection came free in time (nothing was sent)."""
    url = url_for(path) + (f"?{query}" if query else "")
    try:
        async with asyncio.timeout(None) as waiting:
            return await session().request(
                method,
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                trace_request_ctx=_Queueing(waiting),
            )
    except TimeoutError:
        if waiting.expired():
            raise PoolBusy() from None
        raise


# -- the Realtime API's WebSocket -----------------------------------------------------------------

# Seconds OpenAI has to answer a Realtime handshake once the connection is open (its 101 comes
# at once; the session's events come after it, with no timeout).
REALTIME_HANDSHAKE_SECONDS = 30.0


class HandshakeRefused(Exception):
    """OpenAI answered the WebSocket handshake with an HTTP status, not 101."""

    def __init__(self, status: int, request_id: str) -> None:
        super().__init__(f"handshake refused with {status}")
        self.status = status
        self.request_id = request_id


async def realtime_connect(
    *, query: str, client_headers: dict[str, str]
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """Open the Realtime API's WebSocket upstream with the one upstream key: (the socket, its
    x-request-id). Only OpenAI-Beta (which picks the beta protocol) and User-Agent of the
    client's headers go along; never its key nor its subprotocols (the browser form carries
    the proxy key in one). The socket holds one of the pool's connections while it is open.
    Raises HandshakeRefused, TimeoutError (no connection in time: the pool busy, OpenAI
    slow) or aiohttp.ClientError / OSError."""
    headers = {
        name: value
        for name, value in client_headers.items()
        if name.lower() in ("openai-beta", "user-agent")
    }
    headers["Authorization"] = f"Bearer {settings.OPENAI_API_KEY}"
    url = url_for("realtime") + (f"?{query}" if query else "")
    # aiohttp's ws_connect takes no trace context: the wait for a pooled connection is bounded
    # with the rest of the handshake.
    bound = (
        settings.PROXY_UPSTREAM_QUEUE_SECONDS
        + settings.PROXY_UPSTREAM_CONNECT_TIMEOUT
        + REALTIME_HANDSHAKE_SECONDS
    )
    try:
        async with asyncio.timeout(bound):
            ws = await session().ws_connect(
                url,
                headers=headers,
                autoping=True,
                max_msg_size=0,  # OpenAI's events (audio) can be large; the client bounds its own
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
    except aiohttp.WSServerHandshakeError as exc:
        request_id = exc.headers.get("x-request-id", "") if exc.headers else ""
        raise HandshakeRefused(exc.status, request_id) from None
    # The handshake's headers have no public accessor on aiohttp's ClientWebSocketResponse;
    # only its x-request-id is read, for the session's record (relay.realtime).
    response = getattr(ws, "_response", None)
    request_id = response.headers.get("x-request-id", "") if response is not None else ""
    return ws, request_id
