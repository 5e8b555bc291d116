"""The test-only endpoints under /_fake/: what reached "OpenAI", what it billed, and a reset."""

from __future__ import annotations

from aiohttp import web

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
        }
    )


async def bills(request: web.Request) -> web.Response:
    """Every /v1 request answered since the last reset (the last 100,000), oldest first, and
    totals over all of them, so a test can hold the proxy's records against them."""
    state = request.app[STATE]
    return json_response({"bills": list(state.bills.values()), "totals": state.bill_totals})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return json_response({"ok": True})
