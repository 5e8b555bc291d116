"""Settling each realtime response, and the session's own record.

Records: one for the session (endpoint `realtime`, status 101, latency = the session's
length, cost 0 — except for what upstream billed for a response the proxy refused to reserve
and cancelled at once, which is the session's so the ledger has it), and one per response
(endpoint `realtime/response`, its `response.done` usage priced at the model's text and audio
rates, status 200; error_code the response's status when not `completed`).

Every reservation ends: at its `response.done` (settled to the real usage); when the client
leaves, the proxy cancels upstream's responses and waits up to CANCEL_GRACE_SECONDS for their
`response.done` (real usage, status 499); what never got one (upstream gone, the wait over, a
shutdown) is billed at the proxy's estimate (the input bound's text and audio, the text and
audio streamed), marked estimated; a create upstream never started is released.
"""

from __future__ import annotations

from typing import Any

from relay.realtime.budget import Tokens
from usage.pricing import TokenUsage

SESSION_STATUS = 101  # the record of a session that was relayed: it switched protocols


def realtime_usage(usage: object) -> TokenUsage | None:
    """A `response.done` usage (GA and beta alike) as the proxy prices it: cached audio at the
    cached audio rate (gpt-realtime-mini: $0.30 per 1M, five times its cached text rate), the
    rest of the cached tokens at the cached text rate; audio input is the uncached audio."""
    if not isinstance(usage, dict):
        return None

    def number(mapping: object, name: str) -> int:
        value = mapping.get(name) if isinstance(mapping, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    details = usage.get("input_token_details")
    cached_details = details.get("cached_tokens_details") if isinstance(details, dict) else None
    out_details = usage.get("output_token_details")
    prompt = number(usage, "input_tokens")
    cached = min(number(details, "cached_tokens"), prompt)
    audio_in = number(details, "audio_tokens")
    cached_audio = min(number(cached_details, "audio_tokens"), audio_in, cached)
    completion = number(usage, "output_tokens")
    return TokenUsage(
        prompt=prompt,
        cached=cached,
        completion=completion,
        audio_input=audio_in - cached_audio,
        audio_output=min(number(out_details, "audio_tokens"), completion),
        audio_cached=cached_audio,
    )


def _split(usage: TokenUsage | None, raw: object) -> Tokens:
    """A finished response's input + output as text and audio: the next one reads it all."""
    if usage is None:
        return Tokens()
    details = raw.get("input_token_details") if isinstance(raw, dict) else None
    audio_in = details.get("audio_tokens") if isinstance(details, dict) else 0
    audio_in = audio_in if isinstance(audio_in, int) and audio_in > 0 else 0
    audio = min(audio_in, usage.prompt) + usage.audio_output
    return Tokens(text=usage.total - audio, audio=audio)


class ResponseSettlement:
    """Each reservation of a session ended, and the session's record written: mixed into
    RealtimeRelay (relay.realtime.session), whose state it reads and ends."""

    def _done(self, response_id: str, response: dict[str, Any]) -> None:
        meter = self.active.pop(response_id, None)
        self._changed.set()
        if meter is None:
            return
        raw = response.get("usage")
        usage = realtime_usage(raw)
        status = str(response.get("status") or "")
        gone = not self.client_open
        meter.ex.finish(
            499 if gone else 200,
            usage=usage if usage is not None else meter.estimate(),
            estimated=usage is None,
            response_model=self.response_model,
            response_id=response_id,
            upstream_request_id=self.request_id,
            error_code="client_disconnected" if gone else ("" if status == "completed" else status),
            client_disconnected=gone,
        )
        if meter.in_conversation:
            # The next response reads this one's input and output, and whatever came since.
            read = (
                _split(usage, raw)
                if usage is not None
                else Tokens(meter.input.text + meter.estimate().completion, meter.input.audio)
            )
            self.context = Tokens(
                text=read.text + max(self.context.text - meter.snapshot.text, 0),
                audio=read.audio + max(self.context.audio - meter.snapshot.audio, 0),
            )

    def _unreserved_done(self, response: dict[str, Any]) -> None:
        usage = realtime_usage(response.get("usage"))
        if usage is None:
            return
        total = self.unreserved_usage
        self.unreserved_usage = TokenUsage(
            prompt=total.prompt + usage.prompt,
            cached=total.cached + usage.cached,
            completion=total.completion + usage.completion,
            audio_input=total.audio_input + usage.audio_input,
            audio_output=total.audio_output + usage.audio_output,
        )

    def _upstream_error(self, error: object) -> None:
        """An error naming a client's response.create: that response never starts."""
        if not isinstance(error, dict) or not error.get("event_id"):
            return
        for meter in self.pending:
            if meter.event_id == error["event_id"]:
                self.pending.remove(meter)
                meter.ex.finish(
                    400,
                    error_code=str(error.get("code") or error.get("type") or "upstream_error"),
                    upstream_request_id=self.request_id,
                )
                self._changed.set()
                return

    def _end_meters(self) -> None:
        """Every reservation still open ends here, however the session ended: a response
        upstream started is billed at the proxy's estimate, one it never started released."""
        status, code = {
            "client_gone": (499, "client_disconnected"),
            "upstream_closed": (502, "upstream_closed"),
            "interrupted": (503, "interrupted"),
            "refused": (429, "session_refused"),
        }.get(self.end_reason, (500, "proxy_error"))
        gone = self.end_reason == "client_gone"
        for meter in list(self.active.values()):
            meter.ex.finish(
                status,
                usage=meter.estimate(),
                estimated=True,
                response_model=self.response_model,
                response_id=meter.response_id,
                upstream_request_id=self.request_id,
                error_code=code,
                client_disconnected=gone,
            )
        self.active.clear()
        while self.pending:
            self.pending.popleft().ex.finish(
                status,
                error_code=code,
                upstream_request_id=self.request_id,
                client_disconnected=gone,
            )

    def _finish_session(self) -> None:
        code = {
            "client_gone": "",
            "upstream_closed": "upstream_closed",
            "interrupted": "interrupted",
            "refused": "insufficient_quota",
        }.get(self.end_reason, "proxy_error")
        usage = self.unreserved_usage if self.unreserved_usage.billable else None
        self.ex.finish(
            SESSION_STATUS,
            usage=usage,
            response_model=self.response_model,
            upstream_request_id=self.request_id,
            error_code=code,
        )
