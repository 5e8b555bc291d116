"""The fake upstream's aiohttp application: routes, and the gateway every /v1 request goes
through (bookkeeping, auth, knobs, requested failures, the wait before headers, its bill)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from aiohttp import web

from fakeopenai import (
    audio_api,
    batch_api,
    catalog,
    chat,
    control,
    embeddings,
    file_api,
    image_api,
    moderations,
    org_api,
    responses,
)
from fakeopenai.counting import install_encodings
from fakeopenai.errors import OpenAIError, requested_failure
from fakeopenai.knobs import Knobs
from fakeopenai.protocol import BODY, KNOBS, REQUEST_ID, STARTED, TAB, ident, wait_before_headers
from fakeopenai.realtime import realtime as realtime_socket
from fakeopenai.state import STATE, FakeState, Tab

DEFAULT_KEY = "sk-fake-upstream"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _redacted(key: str) -> str:
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "*" * len(key)


@web.middleware
async def openai_gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Before any handler: bookkeeping, routing errors, auth and the request-wide knobs.
    Around it: the request's bill, closed exactly once whatever happens."""
    request[STARTED] = time.perf_counter()
    request[REQUEST_ID] = ident("req_", 32)
    if request.path.startswith("/_fake/"):
        return await handler(request)
    if request.path.startswith("/v1/organization/"):
        return await org_api.admin_gateway(request, handler)
    state = request.app[STATE]
    tab = Tab(request_id=request[REQUEST_ID], path=request.path)
    request[TAB] = tab
    try:
        return await _answer(request, handler, state, tab)
    except (asyncio.CancelledError, ConnectionError):
        # The client left: aiohttp cancelled the handler, or a write found the socket closed.
        if tab.outcome is None:
            tab.outcome = "client_gone"
        raise
    except Exception:
        # A bug in the fake: aiohttp answers 500 with the traceback in the log.
        tab.status, tab.outcome = 500, "error"
        raise
    finally:
        state.close_tab(tab)


async def _answer(
    request: web.Request, handler: Handler, state: FakeState, tab: Tab
) -> web.StreamResponse:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    request[BODY] = body
    if isinstance(body, dict):
        tab.model = body["model"] if isinstance(body.get("model"), str) else None
        tab.stream = body.get("stream") is True
    state.requests += 1
    state.by_path[request.path] += 1
    state.last_request = {
        "method": request.method,
        "path": request.path,
        "headers": {name.lower(): value for name, value in request.headers.items()},
        "body": body,
    }
    try:
        _authenticate(request, state)
        knobs = Knobs.from_body(body)
        request[KNOBS] = knobs
        if knobs.fail_status is not None:
            raise requested_failure(knobs)
        response = await handler(request)
    except OpenAIError as error:
        response = error.response()
    if not response.prepared:
        # A stream has waited and sent its headers already (and set its tab's outcome).
        await wait_before_headers(request)
        tab.status = response.status
        tab.outcome = "completed" if response.status < 400 else "error"
    return response


def _authenticate(request: web.Request, state: FakeState) -> None:
    if request.match_info.http_exception is not None:
        # OpenAI answers a wrong method on a known path as an unknown URL too.
        raise OpenAIError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    key = _bearer(request)
    if key is None:
        raise OpenAIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    if not secrets.compare_digest(key.encode(), state.key.encode()):
        raise OpenAIError(
            401,
            f"Incorrect API key provided: {_redacted(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


async def _openai_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Sent on every response, streams included, just before the headers go out."""
    started = request.get(STARTED)
    elapsed_ms = int((time.perf_counter() - started) * 1000) if started is not None else 0
    headers = response.headers
    # The bill's key: a test finds a proxied request's bill by the id the proxy recorded.
    headers.setdefault("x-request-id", request.get(REQUEST_ID) or ident("req_", 32))
    headers.setdefault("openai-processing-ms", str(elapsed_ms))
    headers.setdefault("openai-version", "2020-10-01")
    headers.setdefault("openai-organization", "fake-org")
    headers.setdefault("openai-project", "proj_fake")
    headers.setdefault("x-ratelimit-limit-requests", "10000")


def create_app(
    *,
    key: str | None = None,
    admin_key: str | None = None,
    latency_ms: float = 0.0,
    encodings_dir: str | Path | None = None,
) -> web.Application:
    """The fake upstream. Without `encodings_dir` it uses Django's TIKTOKEN_CACHE_DIR when
    settings are configured, else a folder in the system temp dir. `admin_key` (default
    $FAKE_OPENAI_ADMIN_KEY or org_api.DEFAULT_ADMIN_KEY) is the one key the organization
    Usage and Costs API accepts."""
    install_encodings(encodings_dir)
    app = web.Application(middlewares=[openai_gateway], client_max_size=64 * 1024**2)
    app[STATE] = FakeState(
        key=key or os.environ.get("FAKE_OPENAI_KEY") or DEFAULT_KEY,
        admin_key=admin_key or os.environ.get("FAKE_OPENAI_ADMIN_KEY") or org_api.DEFAULT_ADMIN_KEY,
        latency_ms=latency_ms,
    )
    app.on_response_prepare.append(_openai_headers)
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/completions", chat.completions)
    app.router.add_post("/v1/embeddings", embeddings.embeddings)
    app.router.add_post("/v1/responses", responses.create_response)
    app.router.add_get("/v1/responses/{response_id}", responses.get_response)
    app.router.add_post("/v1/moderations", moderations.moderations)
    app.router.add_get("/v1/models", catalog.list_models)
    app.router.add_get("/v1/models/{model_id}", catalog.retrieve_model)
    app.router.add_get("/v1/realtime", realtime_socket)
    app.router.add_post("/v1/images/generations", image_api.generations)
    app.router.add_post("/v1/images/edits", image_api.edits)
    app.router.add_post("/v1/images/variations", image_api.variations)
    app.router.add_post("/v1/audio/speech", audio_api.speech)
    app.router.add_post("/v1/audio/transcriptions", audio_api.transcriptions)
    app.router.add_post("/v1/audio/translations", audio_api.translations)
    app.router.add_post("/v1/files", file_api.create_file)
    app.router.add_get("/v1/files", file_api.list_files)
    app.router.add_get("/v1/files/{file_id}", file_api.retrieve_file)
    app.router.add_delete("/v1/files/{file_id}", file_api.delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_api.file_content)
    app.router.add_post("/v1/batches", batch_api.create_batch)
    app.router.add_get("/v1/batches", batch_api.list_batches)
    app.router.add_get("/v1/batches/{batch_id}", batch_api.retrieve_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", batch_api.cancel_batch)
    app.router.add_get("/v1/organization/costs", org_api.costs)
    app.router.add_get("/v1/organization/usage/{family}", org_api.usage)
    app.router.add_get("/_fake/stats", control.stats)
    app.router.add_get("/_fake/bills", control.bills)
    app.router.add_post("/_fake/reset", control.reset)
    app.router.add_post("/_fake/org/adjust", org_api.adjust)
    app.router.add_post("/_fake/batches/{batch_id}/complete", control.complete_batch)
    # Batches run in the background: stopped with the server.
    app.on_cleanup.append(batch_api.stop_batches)
    return app
