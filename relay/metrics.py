"""The relay's Prometheus metrics, counted where each request's record is made (Exchange.finish).

Several server processes (`serve --workers N`) share one count through prometheus_client's
multiprocess mode: `serve` gives each start a fresh PROMETHEUS_MULTIPROC_DIR, inherited by the
workers before they import prometheus_client, where each writes its values to files of its
own, and a scrape answered by any worker adds up all of them (those of workers that died and
were replaced included, so a counter never goes back). Without the variable (uvicorn started
by hand with one process, the tests) the values live in this process.

Labels are bounded whatever clients send: the endpoint is the route with its ids taken out
(`files/{id}`), the model is a price-table name or "other", a refusal's code is one of the
proxy's own; no label holds a key, a key prefix, a user or a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from relay import lifecycle, recording
from relay.media_metering import ROUTES as MEDIA_ROUTES
from relay.metering import METERED
from usage.pricing import PriceBook, price_book_cached

if TYPE_CHECKING:
    from relay.exchange import Exchange
    from usage.models import UsageRecord

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
# Seconds between two readings of this process's gauges (open streams, queued records).
SAMPLE_SECONDS = 1.0
OTHER = "other"

# The `_created` series double every counter's output and are not kept in multiprocess mode.
prometheus_client.disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "proxy_requests",
    "Requests recorded, by route, price-table model and HTTP status.",
    ["endpoint", "model", "status"],
    registry=REGISTRY,
)
COST = Counter(
    "proxy_cost_usd", "USD billed to users, by price-table model.", ["model"], registry=REGISTRY
)
TOKENS = Counter(
    "proxy_tokens",
    "Tokens billed, by model and kind (prompt includes cached, completion includes reasoning).",
    ["model", "kind"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "proxy_request_duration_seconds",
    "Time from a request's key check to its end (a stream's last event), by route.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
OVERHEAD = Histogram(
    "proxy_overhead_seconds",
    "A request's time not spent waiting for OpenAI (its headers, body or stream), by route.",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY,
)
REFUSALS = Counter(
    "proxy_refusals",
    "Requests the proxy answered with an error of its own (nothing relayed), by error code.",
    ["code"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "proxy_upstream_errors",
    "OpenAI failing a request: timeout, unreachable, auth_failed, refused (a realtime "
    "handshake), stream_interrupted, 429, 5xx.",
    ["kind"],
    registry=REGISTRY,
)
OPEN_STREAMS = Gauge(
    "proxy_open_streams",
    "Streams being relayed now (SSE, audio, file downloads, realtime sessions).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "proxy_usage_queue_depth",
    "Usage records finished and not yet written to the database.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

# The proxy's own error codes that say OpenAI failed, and the kind they are counted as.
_UPSTREAM_CODES = {
    "upstream_timeout": "timeout",
    "upstream_unreachable": "unreachable",
    "upstream_auth_failed": "auth_failed",
    "upstream_refused": "refused",
    "stream_interrupted": "stream_interrupted",
}
# Error records that are not refusals: the client left, a realtime session ended.
_NOT_REFUSALS = frozenset(("", "client_disconnected", "session_ended"))
# Realtime sessions: their time upstream is not measured (the session is the wait).
_NO_OVERHEAD = frozenset(("realtime", "realtime/response"))
_ROUTES = frozenset(
    (*METERED, *MEDIA_ROUTES, "models", "files", "batches", "responses", *_NO_OVERHEAD)
)
_ID_ROUTES = frozenset(
    (
        "files/{id}",
        "files/{id}/content",
        "batches/{id}",
        "batches/{id}/cancel",
        "responses/{id}",
        "responses/{id}/input_items",
        "responses/{id}/cancel",
        "models/{id}",
    )
)
_STATUS = {status: str(status) for status in range(100, 600)}
# Label children by label values: `labels()` validates and locks on every call.
_children: dict[tuple, object] = {}
_TOKEN_KINDS = ("prompt", "cached", "completion", "reasoning")
_PID_OF_FILE = re.compile(r"_(\d+)\.db$")


def endpoint_label(endpoint: str) -> str:
    """The route of a relayed path, ids taken out; "other" for a path the relay does not serve."""
    if endpoint in _ROUTES:
        return endpoint
    head, slash, rest = endpoint.partition("/")
    if not slash or not rest:
        return OTHER
    _, slash, tail = rest.partition("/")
    label = f"{head}/{{id}}/{tail}" if slash else f"{head}/{{id}}"
    return label if label in _ID_ROUTES else OTHER


def model_label(model: str, book: PriceBook | None) -> str:
    """The price-table name of a model (`gpt-4o` for `gpt-4o-2024-08-06`), else "other"."""
    if book is None:
        book = price_book_cached(stale_ok=True)
    name = book.resolve(model) if book is not None and model else None
    return name or OTHER


def _child(metric: Counter | Histogram, *values: str):  # noqa: ANN202 (prometheus' own type)
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def observe(ex: Exchange, record: UsageRecord, elapsed: float, book: PriceBook | None) -> None:
    """Count one finished request: cheap (dictionary look-ups, a few additions), no I/O but
    the shared-memory files of multiprocess mode."""
    endpoint = endpoint_label(record.endpoint)
    # The model asked for: what users chose, the same on a refusal as on an answer (OpenAI
    # names a dated snapshot, with a price-table row of its own).
    model = model_label(record.model or record.response_model, book)
    status = record.status_code
    _child(REQUESTS, endpoint, model, _STATUS.get(status, OTHER)).inc()
    if record.cost_usd:
        _child(COST, model).inc(float(record.cost_usd))
    for kind, amount in zip(
        _TOKEN_KINDS,
        (
            record.prompt_tokens,
            record.cached_tokens,
            record.completion_tokens,
            record.reasoning_tokens,
        ),
        strict=True,
    ):
        if amount:
            _child(TOKENS, model, kind).inc(amount)
    _child(DURATION, endpoint).observe(elapsed)
    if endpoint not in _NO_OVERHEAD:
        _child(OVERHEAD, endpoint).observe(max(0.0, elapsed - ex.upstream_seconds))
    code = record.error_code
    kind = _UPSTREAM_CODES.get(code)
    if kind is None and ex.upstream_status >= 500:
        kind = "5xx"
    elif kind is None and ex.upstream_status == 429:
        kind = "429"
    if kind is not None:
        _child(UPSTREAM_ERRORS, kind).inc()
    elif status >= 400 and not ex.upstream_status and code not in _NOT_REFUSALS:
        # Codes the proxy wrote itself (nothing was relayed): literals of its own code.
        _child(REFUSALS, code).inc()


# -- the process's gauges and the files of dead workers ---------------------------------------


def sample() -> None:
    """Read this process's gauges now."""
    OPEN_STREAMS.set(len(lifecycle.open_streams))
    QUEUE_DEPTH.set(recording.pending())


async def _sample_forever() -> None:
    while True:
        sample()
        await asyncio.sleep(SAMPLE_SECONDS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    # A worker that died and is not yet reaped by the server is a zombie: dead (Linux).
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def forget_dead_workers() -> None:
    """Drop the gauges of workers that are gone (killed, replaced): a gauge is what live
    processes hold now. Their counters stay, and are still added up."""
    if not MULTIPROCESS_DIR:
        return
    try:
        names = os.listdir(MULTIPROCESS_DIR)
    except OSError:
        return
    pids = {int(m.group(1)) for name in names if (m := _PID_OF_FILE.search(name))}
    for pid in pids - {os.getpid()}:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, MULTIPROCESS_DIR)


_sampler: asyncio.Task | None = None


def start() -> None:
    """At a process's start (lifespan): tidy dead workers' gauges, then keep its own fresh."""
    global _sampler
    forget_dead_workers()
    if _sampler is None or _sampler.done():
        _sampler = asyncio.get_running_loop().create_task(_sample_forever())


def stop() -> None:
    """At shutdown: this process's gauges stop counting."""
    if _sampler is not None:
        _sampler.cancel()
    if MULTIPROCESS_DIR:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)


def exposition() -> bytes:
    """The text a scrape gets: every process's values when there are several."""
    sample()
    if not MULTIPROCESS_DIR:
        return prometheus_client.generate_latest(REGISTRY)
    forget_dead_workers()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
    return prometheus_client.generate_latest(registry)
