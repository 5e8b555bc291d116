"""A relayed stream keeps what metering needs, not a copy of every chunk (relay.protocol)."""

from __future__ import annotations

import orjson

from relay.protocol import ChatStream, ResponsesStream


def _chat_event(text: str) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _responses_event(text: str) -> bytes:
    delta = {"type": "response.output_text.delta", "item_id": "msg_1", "delta": text}
    return b"event: response.output_text.delta\ndata: " + orjson.dumps(delta) + b"\n\n"


def _held(state) -> int:
    return sum(len(data) for data in state._datas)


def test_a_long_chat_stream_holds_its_text_not_every_chunk():
    state = ChatStream(client_wants_usage=True)
    words = [f"word{i} " for i in range(20_000)]  # ~3 MB of chunks, ~190 KB of text
    most_held = 0
    for word in words:
        assert state.on_event(_chat_event(word)) is not None  # every event is passed on
        most_held = max(most_held, _held(state))
    assert most_held <= 33 * 1024
    assert state.text() == "".join(words)


def test_a_long_responses_stream_holds_its_text_not_every_chunk():
    state = ResponsesStream()
    words = [f"w{i} " for i in range(20_000)]
    most_held = 0
    for word in words:
        state.on_event(_responses_event(word))
        most_held = max(most_held, _held(state))
    assert most_held <= 33 * 1024
    assert state.text() == "".join(words)


def test_a_short_stream_is_never_parsed_for_its_text_until_asked():
    state = ChatStream(client_wants_usage=True)
    for word in ("Hello", " there"):
        state.on_event(_chat_event(word))
    assert state._texts == []  # nothing parsed on the way
    assert state.text() == "Hello there"
