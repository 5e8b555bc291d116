"""The Realtime WebSocket speaks the GA events the SDK parses and bills each response.done as
fakeopenai.realtime says: the whole conversation as input, counted here with tiktoken."""

from __future__ import annotations

import base64

import openai

from fakeopenai.realtime import DEFAULT_INSTRUCTIONS
from fakeopenai.tests.calls import bills, n_tokens


def _user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _done(conn) -> object:  # the SDK's RealtimeConnection
    for event in conn:
        if event.type == "response.done":
            return event.response
    raise AssertionError("no response.done")


def test_each_response_reads_the_whole_conversation_and_is_one_bill(
    fake, client: openai.OpenAI
) -> None:
    with client.realtime.connect(model="gpt-realtime") as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        assert conn.recv().type == "session.updated"
        conn.conversation.item.create(item=_user("Hello there"))
        conn.response.create()
        first = _done(conn)
        conn.conversation.item.create(item=_user("Again"))
        conn.response.create(response={"max_output_tokens": 5})
        second = _done(conn)

    instructions = n_tokens(DEFAULT_INSTRUCTIONS)
    assert first.usage.input_tokens == instructions + n_tokens("Hello there")
    assert first.usage.output_tokens == 12 and first.status == "completed"
    # The first reply is input now, and the max stops the second one.
    assert second.usage.input_tokens == first.usage.input_tokens + 12 + n_tokens("Again")
    assert (second.usage.output_tokens, second.status) == (5, "incomplete")
    billed = {b["request_id"]: b for b in bills(fake)["bills"]}
    for response in (first, second):
        bill = billed[response.id]
        assert bill["prompt_tokens"] == response.usage.input_tokens
        assert bill["completion_tokens"] == response.usage.output_tokens


def test_audio_is_ten_tokens_a_second_in_and_a_cancel_bills_what_went_out(
    fake, client: openai.OpenAI
) -> None:
    two_seconds = base64.b64encode(bytes(96_000)).decode()  # 24 kHz pcm16
    with client.realtime.connect(model="gpt-realtime") as conn:
        conn.session.update(
            session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        conn.input_audio_buffer.append(audio=two_seconds)
        conn.input_audio_buffer.commit()
        slow = {"fake_completion_tokens": "200", "fake_chunk_delay_ms": "10"}
        conn.response.create(response={"metadata": slow})
        for event in conn:
            if event.type == "response.output_audio.delta":
                conn.response.cancel()
                break
        cancelled = _done(conn)

    details = cancelled.usage.input_token_details
    assert (cancelled.status, details.audio_tokens) == ("cancelled", 20)
    assert 0 < cancelled.usage.output_tokens < 200
    bill = {b["request_id"]: b for b in bills(fake)["bills"]}[cancelled.id]
    assert bill["response_status"] == "cancelled" and bill["audio_input_tokens"] == 20
    assert bill["completion_tokens"] == cancelled.usage.output_tokens
