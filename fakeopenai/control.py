"""The test-only endpoints under /_fake/: what reached "OpenAI", what it billed, a reset, and
running a held batch to its end."""

from __future__ import annotations

from aiohttp import web

from fakeopenai.batch_api import run_to_end
from fakeopenai.errors import OpenAIError
from fakeopenai.protocol import json_response
from fakeopenai.state import STATE


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response(
        {
            "requests": state.requests,
            "open_streams": state.open_streams,
            "open_connections": len(state.web_server.connections) if state.web_server else None,
            "last_request": state.last_request,
            "by_path": dict(state.by_path),
            "stored_responses": len(state.responses),
            "stored_files": len(state.files),
            "stored_file_bytes": state.file_bytes,
            "stored_batches": len(state.batches),
            "running_batches": len(state.batch_tasks),
        }
    )


async def bills(request: web.Request) -> web.Response:
    """Every /v1 request answered and every batch line run since the last reset (the last
    100,000), oldest first, and totals over all of them, so a test can hold the proxy's
    records against them. A batch line's bill carries its `batch_id` and `custom_id`."""
    state = request.app[STATE]
    return json_response({"bills": list(state.bills.values()), "totals": state.bill_totals})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return json_response({"ok": True})


async def complete_batch(request: web.Request) -> web.Response:
    """Release a batch held by `metadata.fake_hold` and answer it once it has finished (a
    batch not held is waited for; a finished one answered at once)."""
    batch_id = request.match_info["batch_id"]
    batch = request.app[STATE].batches.get(batch_id)
    if batch is None:
        return OpenAIError(404, f"No batch found with id '{batch_id}'.").response()
    await run_to_end(batch)
    return json_response(batch.to_object())
