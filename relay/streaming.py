"""Relaying a server-sent-event stream, with one end however it ends.

A `StreamRelay` passes upstream's events on as they arrive and ends exactly once, through
`end()`: the stream completed, upstream cut it or ended it early, the client left, the server
is shutting down, or the response was never sent at all (`abandon()`). Every end records the
request from the same stream state, so whichever path ends it, the text generated so far is
what an estimate is counted from.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import orjson
from django.http import StreamingHttpResponse

from relay import lifecycle
from relay.exchange import Exchange
from relay.protocol import ResponsesStream, SSEBuffer, StreamState, response_summary
from usage.pricing import PriceBook

log = logging.getLogger(__name__)

# outcome -> the record's error code
_ERROR_CODES = {
    "done": "",
    "client_gone": "client_disconnected",
    "cut": "stream_interrupted",
    "ended_early": "stream_interrupted",
    "shutdown": "proxy_shutdown",
}


class StreamRelay:
    def __init__(
        self,
        ex: Exchange,
        resp: aiohttp.ClientResponse,
        state: StreamState,
        book: PriceBook,
        request_id: str,
    ) -> None:
        self.ex = ex
        self.resp = resp
        self.state = state
        self.book = book
        self.request_id = request_id
        self.interrupted = False
        self.ended = False

    def interrupt(self) -> None:
        """Shutdown's grace period is over: stop reading upstream (the loop in `events` ends
        with an error event for the client, and the request is recorded as interrupted)."""
        self.interrupted = True
        self.resp.content.set_exception(aiohttp.ClientConnectionError("proxy shutting down"))

    def abandon(self) -> None:
        """The response was never sent (its client left first)."""
        self.end("client_gone")

    def stop(self, outcome: str) -> bool:
        """Let go of upstream's answer, once: False if it was already let go."""
        if self.ended:
            return False
        self.ended = True
        lifecycle.open_streams.discard(self)
        if outcome == "done":
            self.resp.release()
        else:
            # Closing (not releasing) drops the upstream connection at once, so OpenAI stops
            # generating tokens nobody will read.
            self.resp.close()
        return True

    def end(self, outcome: str) -> None:
        if not self.stop(outcome):
            return
        ex, state = self.ex, self.state
        text = state.text()
        ex.finish(
            499 if outcome == "client_gone" else 200,
            book=self.book,
            usage=state.usage,
            estimated_text=None if state.usage is not None else text,
            response_model=state.response_model,
            service_tier=state.service_tier,
            upstream_request_id=self.request_id,
            response_id=state.response_id,
            output=state.output,
            partial_images=state.partial_images,
            error_code=_ERROR_CODES[outcome],
            client_disconnected=outcome == "client_gone",
            response_body=response_summary(state.response_model or ex.model, text, state.usage)
            if ex.log_bodies
            else "",
        )

    async def events(self) -> AsyncIterator[bytes]:
        """Pass each SSE event on as it arrives; whatever ends the stream, record it once."""
        buffer = SSEBuffer()
        state = self.state
        lifecycle.open_streams.add(self)
        outcome = "client_gone"  # what a CancelledError / GeneratorExit below means
        try:
            try:
                async for chunk in self.ex.from_upstream(self.resp.content.iter_any()):
                    self.ex.first_byte()
                    for event in buffer.feed(chunk):
                        out = state.on_event(event)
                        if state.response_id:
                            # Before the client sees the terminal event and can continue from it.
                            self.ex.claim_response(state.response_id)
                        if out is not None:
                            yield out
                rest = buffer.rest()
                if rest.strip():
                    out = state.on_event(rest + b"\n\n")
                    if out is not None:
                        yield out
                outcome = "done" if state.finished else "ended_early"
            except (aiohttp.ClientError, OSError, TimeoutError):
                outcome = "shutdown" if self.interrupted else "cut"
                # Events that arrived with the break are still the client's (and billed).
                for event in buffer.feed(_unread(self.resp.content)):
                    out = state.on_event(event)
                    if out is not None:
                        yield out
        finally:
            self.end(outcome)
        if outcome != "done":
            # A clean end for the client: an error event its SDK raises, instead of a hang.
            message = (
                "The proxy is restarting; the stream was closed before it was complete."
                if outcome == "shutdown"
                else "The upstream stream from OpenAI ended before it was complete."
            )
            yield _stream_error_event(state, message)


def _unread(content: aiohttp.StreamReader) -> bytes:
    """What aiohttp received but did not hand out before a connection broke: its reader
    raises the error first and drops the buffered bytes, so a cut that arrives with the last
    events would lose them (seen with a fake upstream that writes and closes at once; the
    cut-stream tests in relay/tests/test_metering.py fail if aiohttp changes this)."""
    return b"".join(getattr(content, "_buffer", ()))


class BodyRelay:
    """A large answer with nothing to meter in it (a file's content) passed on chunk by chunk
    as it arrives, never held whole, and recorded once however it ends."""

    CHUNK = 256 * 1024

    def __init__(self, ex: Exchange, resp: aiohttp.ClientResponse, request_id: str) -> None:
        self.ex, self.resp, self.request_id = ex, resp, request_id
        self.interrupted = False
        self.ended = False

    def interrupt(self) -> None:
        self.interrupted = True
        self.resp.content.set_exception(aiohttp.ClientConnectionError("proxy shutting down"))

    def abandon(self) -> None:
        self.end("client_gone")

    def end(self, outcome: str) -> None:
        if self.ended:
            return
        self.ended = True
        lifecycle.open_streams.discard(self)
        if outcome == "done":
            self.resp.release()
        else:
            self.resp.close()
        self.ex.finish(
            499 if outcome == "client_gone" else 200,
            upstream_request_id=self.request_id,
            error_code=_ERROR_CODES[outcome],
            client_disconnected=outcome == "client_gone",
        )

    async def events(self) -> AsyncIterator[bytes]:
        lifecycle.open_streams.add(self)
        outcome = "client_gone"  # what a CancelledError / GeneratorExit below means
        try:
            async for chunk in self.ex.from_upstream(self.resp.content.iter_chunked(self.CHUNK)):
                self.ex.first_byte()
                yield chunk
            outcome = "done"
        except (aiohttp.ClientError, OSError, TimeoutError):
            # The client's body ends short of its Content-Length: its SDK raises.
            outcome = "shutdown" if self.interrupted else "cut"
        finally:
            self.end(outcome)


class RelayStreamingResponse(StreamingHttpResponse):
    """A relayed stream: the handler calls `abandon()` if it never sent it."""

    def __init__(self, relay: StreamRelay | BodyRelay, *, headers: dict[str, str]) -> None:
        super().__init__(relay.events(), status=200, headers=headers)
        self.relay = relay

    def abandon(self) -> None:
        self.relay.abandon()


def _stream_error_event(state: StreamState, message: str) -> bytes:
    error = {
        "error": {
            "message": message,
            "type": "upstream_error",
            "param": None,
            "code": "stream_interrupted",
        }
    }
    if isinstance(state, ResponsesStream):
        return b"event: error\ndata: " + orjson.dumps({"type": "error", **error}) + b"\n\n"
    return b"data: " + orjson.dumps(error) + b"\n\n"
