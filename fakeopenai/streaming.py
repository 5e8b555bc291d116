"""Writing an SSE answer: pacing, stalls, cut and short streams, and how far it got.

`cut_after`, `end_early_after` and `stall_after` count `content` frames only (the text
deltas), never the head (role chunk, `response.created` …) or the tail (finish chunk, usage,
`[DONE]`). The request's tab learns each frame as it is written, so a client that leaves,
a cut or an early end bills exactly the output that went out.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from aiohttp import web

from fakeopenai.knobs import Knobs
from fakeopenai.protocol import TAB, sleep_ms, wait_before_headers
from fakeopenai.state import STATE


async def _stall(knobs: Knobs) -> None:
    if knobs.stall_ms is None:
        # Until the client leaves: served by `start_server`, aiohttp cancels the handler then.
        await asyncio.get_running_loop().create_future()
    else:
        await sleep_ms(knobs.stall_ms)


async def write_stream(
    request: web.Request,
    knobs: Knobs,
    *,
    head: list[bytes],
    content: list[bytes],
    tail: list[bytes],
    usage_at: int | None = None,
    on_complete: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """Write `head + content + tail`; `usage_at` is the index in `tail` of the frame that
    carries usage, if any."""
    state = request.app[STATE]
    tab = request[TAB]
    tab.stream = True
    stop_at, ending = len(content), "completed"
    if knobs.cut_after is not None and knobs.cut_after < stop_at:
        stop_at, ending = max(0, knobs.cut_after), "cut"
    elif knobs.end_early_after is not None and knobs.end_early_after < stop_at:
        stop_at, ending = max(0, knobs.end_early_after), "ended_early"
    frames = head + content[:stop_at] + (tail if ending == "completed" else [])
    first, last = len(head), len(head) + stop_at  # frames[first:last] are content
    usage_frame = last + usage_at if usage_at is not None and ending == "completed" else None
    stall_at = None if knobs.stall_after is None else first + min(knobs.stall_after, stop_at)
    # Where one write ends and the next begins: after every frame when paced, else only at
    # the stall. One write with no delay asked for: the latency benchmark measures the
    # proxy, not a syscall per chunk here.
    edges = {0, len(frames)}
    if knobs.chunk_delay_ms > 0:
        edges.update(range(1, len(frames)))
    if stall_at is not None:
        edges.add(stall_at)

    await wait_before_headers(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    tab.status = response.status
    state.open_streams += 1
    try:
        for start, end in itertools.pairwise(sorted(edges)):
            if start == stall_at:
                await _stall(knobs)
            elif start and knobs.chunk_delay_ms > 0:
                await sleep_ms(knobs.chunk_delay_ms)
            # A client that hung up makes this raise ConnectionResetError (or, served with
            # handler_cancellation, cancels the task): the gateway bills what was written.
            await response.write(b"".join(frames[start:end]))
            tab.content_frames += max(0, min(end, last) - max(start, first))
            if usage_frame is not None and start <= usage_frame < end:
                tab.usage_reported = True
        if stall_at == len(frames):
            await _stall(knobs)
        if ending == "cut":
            tab.outcome = "cut"
            # Close the socket with the chunked body unfinished: close() flushes what was
            # written, so the client reads those chunks and then a broken body.
            if request.transport is not None:
                request.transport.close()
            return response
        tab.outcome = ending
        if ending == "completed" and on_complete is not None:
            on_complete()
        await response.write_eof()
        return response
    finally:
        state.open_streams -= 1
