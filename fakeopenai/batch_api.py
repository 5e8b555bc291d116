"""The Batch API: POST /v1/batches, GET /v1/batches, GET /v1/batches/{id} and
POST /v1/batches/{id}/cancel, and the run behind each batch.

What the fake assumes OpenAI does with a batch: it reads the input file while `validating`;
a line that is not JSON, lacks `custom_id`, `method`, `url` or `body`, repeats a custom_id,
is not a POST, names another url than the batch's endpoint or another model than the other
lines fails the whole batch (`failed`, each problem in `errors.data` with its line), as does
an empty file or one of more than 50,000 lines; no line is run. Otherwise the batch goes
`in_progress`, runs each line as the endpoint would answer it, then `finalizing` and
`completed`. A line answered 2xx goes to the output file, any other to the error file with
its status and OpenAI's error body (`"error": null`); both files have purpose
`batch_output`, and exist only if a line went there. A cancelled batch goes `cancelling`,
finishes the line in flight and stops: what ran stays in the output and error files, and
each line it never ran is written to the error file as `batch_cancelled`, counted neither
completed nor failed. Cancelling a batch that has finished is a 400.

What the fake assumes OpenAI bills for a batch: each line it ran, as that request would
bill on its own (the line's `fake` knobs honoured, `fail_status` included; a streamed line is
refused, 400); a line never run nothing. Each line leaves its own bill, keyed by the
`request_id` of its output line and marked with `batch_id` and `custom_id`
(`fakeopenai.state.Tab`); the batch's `usage` is the sum of its lines' bills. The batch
discount is the proxy's to price, not the fake's. The calls to /v1/batches bill nothing.

The fake's timing: ~50 ms validating, the lines back to back (each waiting its own
`fake.latency_ms`, never the server's --latency-ms), ~50 ms finalizing. A batch made with
`metadata` `{"fake_hold": "true"}` stays `in_progress` before its first line, and with
`{"fake_hold": "N"}` after its first N lines, until `POST /_fake/batches/{id}/complete`
(which runs it to the end and answers the finished batch) or a cancel. Batches never expire.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from fakeopenai.errors import OpenAIError, requested_failure
from fakeopenai.file_api import (
    BATCH_FILE_SECONDS,
    bounded_int,
    cursor_page,
    expires_after_seconds,
    store_file,
    stored_file,
)
from fakeopenai.knobs import Knobs
from fakeopenai.protocol import (
    BODY,
    KNOBS,
    REQUEST_ID,
    STARTED,
    TAB,
    ident,
    json_body,
    json_response,
    sleep_ms,
)
from fakeopenai.state import STATE, FakeState, Tab

log = logging.getLogger(__name__)

ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/responses",
)
COMPLETION_WINDOWS = {"24h": 24 * 3600}
MAX_LINES = 50_000
MAX_BATCHES_PAGE = 100
DEFAULT_BATCHES_PAGE = 20
MAX_METADATA_PAIRS = 16
PHASE_SECONDS = 0.05  # validating, and again finalizing
HOLD_KEY = "fake_hold"
FINISHED = ("failed", "completed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchLine:
    number: int  # 1-based, as OpenAI counts lines in `errors`
    custom_id: str
    body: dict[str, Any]


@dataclass
class BatchRun:
    """One batch: what it was made with, how far it got, and its background run."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    input: bytes  # the input file as it was when the batch was made
    metadata: dict[str, str] | None = None
    output_expires_after: int | None = None
    hold_after: int | None = None  # lines to run before holding; None: never hold
    status: str = "validating"
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    errors: list[dict[str, Any]] | None = None
    model: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    output_lines: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def to_object(self) -> dict[str, Any]:
        """The Batch object, every field the SDK's `Batch` type has."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.created_at + COMPLETION_WINDOWS[self.completion_window],
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": None,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "metadata": self.metadata,
        }

    @property
    def cancelling(self) -> bool:
        return self.cancelling_at is not None


# Checking a batch as it is made: its parameters, answered 400 at once.


def _invalid_value(value: object, supported: tuple[str, ...], param: str) -> OpenAIError:
    listed = ", ".join(f"'{name}'" for name in supported)
    if len(supported) > 1:
        head, _, last = listed.rpartition(", ")
        listed = f"{head}, and {last}"
    return OpenAIError(
        400,
        f"Invalid value: '{value}'. Supported values are: {listed}.",
        param=param,
        code="invalid_value",
    )


def _required_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise OpenAIError(
            400,
            f"Missing required parameter: '{name}'.",
            param=name,
            code="missing_required_parameter",
        )
    if not isinstance(value, str):
        raise OpenAIError(
            400,
            f"Invalid type for '{name}': expected a string.",
            param=name,
            code="invalid_type",
        )
    return value


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise OpenAIError(
            400,
            "Invalid type for 'metadata': expected an object.",
            param="metadata",
            code="invalid_type",
        )
    if len(value) > MAX_METADATA_PAIRS:
        raise OpenAIError(
            400,
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{MAX_METADATA_PAIRS} properties, but got an object with {len(value)} "
            "properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise OpenAIError(
                400,
                f"Invalid 'metadata.{key}': keys are strings of at most 64 characters, "
                "values strings of at most 512.",
                param=f"metadata.{key}",
                code="invalid_value",
            )
    return dict(value)


def _hold_after(metadata: dict[str, str] | None) -> int | None:
    value = (metadata or {}).get(HOLD_KEY)
    if value is None:
        return None
    if value == "true":
        return 0
    if not value.isdigit():
        raise OpenAIError(
            400,
            'metadata.fake_hold must be "true" or a number of lines to run before holding.',
            param=f"metadata.{HOLD_KEY}",
        )
    return int(value)


def _output_expires_after(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise OpenAIError(
            400,
            "Invalid type for 'output_expires_after': expected an object.",
            param="output_expires_after",
            code="invalid_type",
        )
    return expires_after_seconds(
        value.get("anchor"), value.get("seconds"), param="output_expires_after"
    )


# Validating: the input file's lines, any problem failing the whole batch.


def _line_error(code: str, number: int | None, message: str, param: str | None = None) -> dict:
    return {"code": code, "line": number, "message": message, "param": param}


def _check_line(raw: bytes, number: int, endpoint: str) -> BatchLine | dict[str, Any]:
    """The line, or the error that fails the batch."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _line_error("invalid_json_line", number, "This line is not parseable as valid JSON.")
    if not isinstance(obj, dict):
        return _line_error("invalid_json_line", number, "This line is not a JSON object.")
    for name in ("custom_id", "method", "url", "body"):
        if obj.get(name) is None:
            return _line_error(
                "missing_required_parameter",
                number,
                f"Missing required parameter: '{name}'.",
                name,
            )
    if not isinstance(obj["custom_id"], str):
        return _line_error(
            "invalid_type", number, "Invalid type for 'custom_id': expected a string.", "custom_id"
        )
    if obj["method"] != "POST":
        return _line_error(
            "invalid_value",
            number,
            f"Invalid value: '{obj['method']}'. Supported values are: 'POST'.",
            "method",
        )
    if obj["url"] != endpoint:
        return _line_error(
            "url_mismatch",
            number,
            f"The URL provided for this request ('{obj['url']}') does not match the batch "
            f"endpoint ('{endpoint}').",
            "url",
        )
    if not isinstance(obj["body"], dict):
        return _line_error(
            "invalid_type", number, "Invalid type for 'body': expected an object.", "body"
        )
    return BatchLine(number, obj["custom_id"], obj["body"])


def validate(content: bytes, endpoint: str) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    """The input file's lines, and the errors that fail the batch (none: it runs)."""
    numbered = [(number, raw) for number, raw in enumerate(content.split(b"\n"), 1) if raw.strip()]
    if not numbered:
        return [], [_line_error("empty_file", None, "The batch input file is empty.")]
    if len(numbered) > MAX_LINES:
        return [], [
            _line_error(
                "too_many_tasks",
                None,
                f"The batch input file has {len(numbered)} requests; a batch may have at "
                f"most {MAX_LINES}.",
            )
        ]
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in numbered:
        checked = _check_line(raw, number, endpoint)
        if isinstance(checked, dict):
            errors.append(checked)
        elif checked.custom_id in seen:
            errors.append(
                _line_error(
                    "duplicate_custom_id",
                    number,
                    "The custom_id for this request is a duplicate of another request. The "
                    "custom_id parameter must be unique for each request in a batch.",
                    "custom_id",
                )
            )
        elif lines and checked.body.get("model") != lines[0].body.get("model"):
            seen.add(checked.custom_id)
            errors.append(
                _line_error(
                    "model_mismatch",
                    number,
                    f"The model of this request ('{checked.body.get('model')}') differs from "
                    f"the batch's ('{lines[0].body.get('model')}'): a batch may only include "
                    "requests to a single model.",
                    "body.model",
                )
            )
        else:
            seen.add(checked.custom_id)
            lines.append(checked)
    return lines, errors


# Running: each line answered by the endpoint's own handler, on a request of its own.


async def _answer_line(app: web.Application, endpoint: str, request: web.Request) -> web.Response:
    """What the gateway does for a direct request, less auth and the server's latency."""
    knobs: Knobs | None = None
    try:
        knobs = Knobs.from_body(request[BODY])
        request[KNOBS] = knobs
        if knobs.fail_status is not None:
            raise requested_failure(knobs)
        if request[BODY].get("stream") is True:
            raise OpenAIError(400, "Streaming is not supported in the Batch API.", param="stream")
        handler = (await app.router.resolve(request)).handler
        response = await handler(request)
    except OpenAIError as error:
        response = error.response()
    if knobs is not None:
        await sleep_ms(knobs.latency_ms or 0)
    if not isinstance(response, web.Response):
        raise TypeError(f"{endpoint} answered a batch line with a stream")
    return response


def _details(usage: object) -> tuple[int, int]:
    """Cached input and reasoning tokens of a chat, completions or Responses usage block."""
    if not isinstance(usage, dict):
        return 0, 0
    inputs = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    outputs = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    return inputs.get("cached_tokens") or 0, outputs.get("reasoning_tokens") or 0


async def _run_line(app: web.Application, batch: BatchRun, line: BatchLine) -> None:
    state = app[STATE]
    request_id = secrets.token_hex(16)
    tab = Tab(
        request_id=request_id, path=batch.endpoint, batch_id=batch.id, custom_id=line.custom_id
    )
    model = line.body.get("model")
    tab.model = model if isinstance(model, str) else None
    request = make_mocked_request(
        "POST", batch.endpoint, headers={"Content-Type": "application/json"}, app=app
    )
    request[STARTED] = time.perf_counter()
    request[REQUEST_ID] = request_id
    request[BODY] = line.body
    request[TAB] = tab
    try:
        response = await _answer_line(app, batch.endpoint, request)
    except asyncio.CancelledError:
        raise  # a reset or the server's end: the batch is forgotten, the line unbilled
    except Exception:
        log.exception("batch %s: line %s broke the fake", batch.id, line.custom_id)
        response = OpenAIError(
            500, "The server had an error while processing your request.", type_="server_error"
        ).response()
    tab.status = response.status
    tab.outcome = "completed" if response.status < 400 else "error"
    bill = state.close_tab(tab)
    assert isinstance(response.body, bytes)
    body = orjson.loads(response.body)
    record = {
        "id": ident("batch_req_", 32),
        "custom_id": line.custom_id,
        "response": {"status_code": response.status, "request_id": request_id, "body": body},
        "error": None,
    }
    if response.status < 400:
        batch.completed += 1
        batch.output_lines.append(orjson.dumps(record))
    else:
        batch.failed += 1
        batch.error_lines.append(orjson.dumps(record))
    batch.input_tokens += bill["prompt_tokens"]
    batch.output_tokens += bill["completion_tokens"]
    cached, reasoning = _details(body.get("usage"))
    batch.cached_tokens += cached
    batch.reasoning_tokens += reasoning


def _write_files(state: FakeState, batch: BatchRun) -> None:
    expires = batch.output_expires_after or BATCH_FILE_SECONDS
    for kind, lines in (("output", batch.output_lines), ("error", batch.error_lines)):
        if lines:
            info = store_file(
                state,
                b"".join(line + b"\n" for line in lines),
                filename=f"{batch.id}_{kind}.jsonl",
                purpose="batch_output",
                expires_after=expires,
            )
            setattr(batch, f"{kind}_file_id", info["id"])
    batch.output_lines, batch.error_lines = [], []


def _cancel_unrun(batch: BatchRun, unrun: list[BatchLine]) -> None:
    for line in unrun:
        record = {
            "id": ident("batch_req_", 32),
            "custom_id": line.custom_id,
            "response": None,
            "error": {
                "code": "batch_cancelled",
                "message": "This request was not executed because the batch was cancelled.",
            },
        }
        batch.error_lines.append(orjson.dumps(record))


async def _run(app: web.Application, batch: BatchRun) -> None:
    state = app[STATE]
    await asyncio.sleep(PHASE_SECONDS)
    lines: list[BatchLine] = []
    if not batch.cancelling:
        lines, errors = validate(batch.input, batch.endpoint)
        if errors:
            batch.status, batch.failed_at, batch.errors = "failed", int(time.time()), errors
            return
        batch.total = len(lines)
        model = lines[0].body.get("model")
        batch.model = model if isinstance(model, str) else None
        batch.status, batch.in_progress_at = "in_progress", int(time.time())
    ran = 0
    for line in lines:
        if batch.hold_after is not None and ran >= batch.hold_after:
            await batch.released.wait()
        if batch.cancelling:
            break
        await _run_line(app, batch, line)
        ran += 1
    if batch.cancelling:
        _cancel_unrun(batch, lines[ran:])
        _write_files(state, batch)
        batch.status, batch.cancelled_at = "cancelled", int(time.time())
        return
    batch.status, batch.finalizing_at = "finalizing", int(time.time())
    await asyncio.sleep(PHASE_SECONDS)
    _write_files(state, batch)
    batch.status, batch.completed_at = "completed", int(time.time())


async def run_to_end(batch: BatchRun) -> None:
    """Release a held batch and wait for it to finish (POST /_fake/batches/{id}/complete)."""
    batch.released.set()
    if batch.task is not None:
        # Waited, not awaited: a run a reset stopped must not cancel the caller.
        await asyncio.wait({batch.task})


async def stop_batches(app: web.Application) -> None:
    """On the app's cleanup: stop every batch still running."""
    tasks = list(app[STATE].batch_tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# The handlers.


def _batch(state: FakeState, batch_id: str) -> BatchRun:
    batch = state.batches.get(batch_id)
    if batch is None:
        raise OpenAIError(404, f"No batch found with id '{batch_id}'.")
    return batch


async def create_batch(request: web.Request) -> web.Response:
    body = json_body(request)
    state = request.app[STATE]
    input_file_id = _required_string(body, "input_file_id")
    endpoint = _required_string(body, "endpoint")
    if endpoint not in ENDPOINTS:
        raise _invalid_value(endpoint, ENDPOINTS, "endpoint")
    window = _required_string(body, "completion_window")
    if window not in COMPLETION_WINDOWS:
        raise _invalid_value(window, tuple(COMPLETION_WINDOWS), "completion_window")
    metadata = _metadata(body.get("metadata"))
    hold_after = _hold_after(metadata)
    output_expires_after = _output_expires_after(body.get("output_expires_after"))
    source = stored_file(state, input_file_id)
    if source.info["purpose"] != "batch":
        raise OpenAIError(
            400,
            f"The input file must have purpose 'batch', not '{source.info['purpose']}'.",
            param="input_file_id",
        )
    batch = BatchRun(
        id=ident("batch_", 32),
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window=window,
        created_at=int(time.time()),
        input=source.content,
        metadata=metadata,
        output_expires_after=output_expires_after,
        hold_after=hold_after,
    )
    state.remember_batch(batch)
    batch.task = asyncio.get_running_loop().create_task(_run(request.app, batch))
    state.start_batch(batch.task)
    return json_response(batch.to_object())


async def retrieve_batch(request: web.Request) -> web.Response:
    return json_response(_batch(request.app[STATE], request.match_info["batch_id"]).to_object())


async def list_batches(request: web.Request) -> web.Response:
    limit = bounded_int(
        request.query.get("limit", str(DEFAULT_BATCHES_PAGE)),
        param="limit",
        low=1,
        high=MAX_BATCHES_PAGE,
    )
    # Newest first.
    batches = [batch.to_object() for batch in reversed(request.app[STATE].batches.values())]
    return json_response(cursor_page(batches, limit=limit, after=request.query.get("after")))


async def cancel_batch(request: web.Request) -> web.Response:
    batch = _batch(request.app[STATE], request.match_info["batch_id"])
    if batch.status in FINISHED or batch.status == "finalizing":
        raise OpenAIError(
            400,
            f"Cannot cancel a batch with status '{batch.status}'.",
            param="batch_id",
        )
    if not batch.cancelling:
        batch.status, batch.cancelling_at = "cancelling", int(time.time())
        batch.released.set()
    return json_response(batch.to_object())
