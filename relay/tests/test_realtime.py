"""The Realtime API end to end: the official SDK's realtime client → the proxy process (a
WebSocket) → the fake OpenAI (fakeopenai.realtime), each response metered."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.e2e import records_for, wait_for

MODEL = "gpt-realtime"


def user_text(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def official_price(model: str, bill: dict) -> Decimal:
    """What OpenAI's price table says a realtime bill costs: text and audio at their rates,
    cached input at the cached rate (the fake caches text only)."""
    from usage.models import ModelPrice

    row = ModelPrice.objects.filter(model=model).latest("effective_from")
    cached = bill["cached_tokens"]
    audio_in, audio_out = bill["audio_input_tokens"], bill["audio_output_tokens"]
    text_in = bill["prompt_tokens"] - audio_in - cached
    text_out = bill["completion_tokens"] - audio_out
    return (
        text_in * row.input_per_1m
        + cached * row.cached_input_per_1m
        + audio_in * row.audio_input_per_1m
        + text_out * row.output_per_1m
        + audio_out * row.audio_output_per_1m
    ) / Decimal(1_000_000)


def read_response(conn) -> tuple[str, object]:
    """Events until a response.done: (the text or transcript streamed, the response)."""
    text = ""
    for event in conn:
        if event.type in ("response.output_text.delta", "response.output_audio_transcript.delta"):
            text += event.delta
        elif event.type == "response.done":
            return text, event.response
        elif event.type == "error":
            raise AssertionError(f"unexpected error event: {event.error}")
    raise AssertionError("the session closed before response.done")


def bills_by_id(e2e) -> dict[str, dict]:
    return {bill["request_id"]: bill for bill in e2e.upstream.bills()["bills"]}


def assert_nothing_held(secret: str) -> None:
    """No pending record, nothing reserved, and the key's ledger spent what its records cost."""
    from keys.models import QuotaLedger, key_hash
    from usage.models import UsageRecord

    records = UsageRecord.objects.filter(api_key__key_hash=key_hash(secret))
    assert not records.filter(state="pending").exists(), "a record is still pending"
    [ledger] = QuotaLedger.objects.filter(api_key__key_hash=key_hash(secret))
    assert ledger.reserved_usd == 0 and ledger.reserved_tokens == 0, "a reservation is held"
    assert ledger.spent_usd == sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))


def test_a_session_of_two_text_responses_is_one_record_and_one_per_response(e2e):
    secret = e2e.key(budget_usd="5", period="total")
    client = e2e.client(secret)
    replies = []
    with client.realtime.connect(model=MODEL) as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        assert conn.recv().type == "session.updated"
        for question, cached in (("Say hello to the proxy", "0"), ("And once more", "30")):
            conn.conversation.item.create(item=user_text(question))
            # The second reads 30 tokens from OpenAI's cache: billed at the cached rate.
            metadata = {"fake_cached_tokens": cached}
            conn.response.create(response={"max_output_tokens": 200, "metadata": metadata})
            replies.append(read_response(conn))

    session, first, second = records_for(secret, 3)
    bills = bills_by_id(e2e)
    assert (session.endpoint, session.status_code, session.model) == ("realtime", 101, MODEL)
    assert session.cost_usd == 0 and session.prompt_tokens == 0 and session.stream
    for (text, response), record in zip(replies, (first, second), strict=True):
        bill = bills[response.id]
        assert text and response.status == "completed"
        assert (record.endpoint, record.status_code, record.response_id) == (
            "realtime/response",
            200,
            response.id,
        )
        assert not record.estimated
        assert record.prompt_tokens == bill["prompt_tokens"] == response.usage.input_tokens
        assert record.completion_tokens == bill["completion_tokens"]
        assert record.cost_usd == official_price(MODEL, bill)
    # The second response read the whole conversation: the first one's input and output too.
    assert second.prompt_tokens > first.prompt_tokens + first.completion_tokens
    assert (first.cached_tokens, second.cached_tokens) == (0, 30)
    assert_nothing_held(secret)


def test_audio_in_and_out_through_the_key_in_path_form_is_priced_at_audio_rates(e2e):
    from openai import OpenAI

    secret = e2e.key()
    client = OpenAI(api_key="ignored", base_url=f"{e2e.proxy.url}/{secret}/v1", max_retries=0)
    with client.realtime.connect(model=MODEL) as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["audio"],
                "audio": {"input": {"turn_detection": None}},
            }
        )
        conn.input_audio_buffer.append(audio=ONE_SECOND)
        conn.input_audio_buffer.append(audio=ONE_SECOND)
        conn.input_audio_buffer.commit()
        conn.response.create()
        transcript, response = read_response(conn)

    _, record = records_for(secret, 2)
    bill = bills_by_id(e2e)[response.id]
    assert transcript and bill["audio_input_tokens"] == 20 and bill["audio_output_tokens"] > 0
    assert record.audio_input_tokens == 20
    assert record.audio_output_tokens == bill["audio_output_tokens"]
    assert record.cost_usd == official_price(MODEL, bill)
    # The upstream key went upstream; the proxy key never did.
    headers = e2e.upstream.stats()["last_request"]["headers"]
    assert secret not in json.dumps(headers)


ONE_SECOND = base64.b64encode(bytes(48_000)).decode()  # 24 kHz pcm16: 10 audio tokens
SERVER_VAD = {
    "type": "realtime",
    "output_modalities": ["text"],
    "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 20}}},
}


def test_a_response_upstream_starts_itself_is_reserved_when_seen(e2e):
    secret = e2e.key(budget_usd="5", period="total")
    with e2e.client(secret).realtime.connect(model=MODEL) as conn:
        conn.session.update(session=SERVER_VAD)
        conn.input_audio_buffer.append(audio=ONE_SECOND)  # speech, then silence: a turn
        _, response = read_response(conn)  # no response.create: server VAD made it

    _, record = records_for(secret, 2)
    bill = bills_by_id(e2e)[response.id]
    assert (record.endpoint, record.status_code, record.response_id) == (
        "realtime/response",
        200,
        response.id,
    )
    assert record.audio_input_tokens == bill["audio_input_tokens"] == 10
    assert record.cost_usd == official_price(MODEL, bill)
    assert_nothing_held(secret)


def test_a_response_upstream_starts_that_the_budget_cannot_cover_is_cancelled(e2e):
    # Its worst case is 4,096 output tokens ("inf") at $64/1M: $0.26, over the budget.
    secret = e2e.key(budget_usd="0.01", period="total")
    events = []
    with e2e.client(secret).realtime.connect(model=MODEL) as conn:
        conn.session.update(session=SERVER_VAD)
        conn.input_audio_buffer.append(audio=ONE_SECOND)
        with pytest.raises(ConnectionClosed):
            for event in conn:
                events.append(event)

    assert [e.error.code for e in events if e.type == "error"] == ["insufficient_quota"]
    assert not [e for e in events if e.type.startswith("response.")]
    session, refused = records_for(secret, 2)
    assert (refused.status_code, refused.error_code) == (429, "insufficient_quota")
    # Cancelled at once (a short reply may have been done before the cancel reached it).
    [bill] = [b for b in e2e.upstream.bills()["bills"] if b["status"] == 200]
    # Upstream billed the input it had read: on the session's record, so the ledger has it.
    assert (session.status_code, session.error_code) == (101, "insufficient_quota")
    assert session.cost_usd == official_price(MODEL, bill) > 0
    assert_nothing_held(secret)


def test_a_budget_for_one_response_gets_an_error_event_and_the_session_closed(e2e):
    # The first response's worst case (its ~40 tokens of input at the audio rate, 100 tokens
    # out at $64/1M) is under $0.01; the second's (4,000 tokens out) is $0.26.
    secret = e2e.key(budget_usd="0.05", period="total")
    client = e2e.client(secret)
    with client.realtime.connect(model=MODEL) as conn:
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        conn.conversation.item.create(item=user_text("Hello"))
        conn.response.create(response={"max_output_tokens": 100})
        _, granted = read_response(conn)
        conn.response.create(response={"max_output_tokens": 4000})
        events = []
        with pytest.raises(ConnectionClosed):
            for event in conn:
                events.append(event)

    errors = [e for e in events if e.type == "error"]
    assert [(e.error.type, e.error.code) for e in errors] == [
        ("insufficient_quota", "insufficient_quota")
    ]
    assert not [e for e in events if e.type == "response.created"]
    session, first, refused = records_for(secret, 3)
    assert (session.status_code, session.error_code) == (101, "insufficient_quota")
    assert (first.status_code, first.response_id) == (200, granted.id)
    assert (refused.endpoint, refused.status_code, refused.error_code) == (
        "realtime/response",
        429,
        "insufficient_quota",
    )
    assert [b["request_id"] for b in e2e.upstream.bills()["bills"] if b["status"] == 200] == [
        granted.id
    ]
    assert first.cost_usd + session.cost_usd <= Decimal("0.05")
    assert_nothing_held(secret)


def test_wrong_revoked_and_unallowed_keys_are_refused_before_the_handshake(e2e):
    from keys.models import ApiKey, key_hash
    from keys.services import key_revoke

    url = f"ws://{e2e.proxy.url.removeprefix('http://')}/v1/realtime?model={MODEL}"

    def refused(secret: str, target: str = url) -> tuple[int, dict]:
        with pytest.raises(InvalidStatus) as answer:
            ws_connect(target, additional_headers={"Authorization": f"Bearer {secret}"})
        response = answer.value.response
        return response.status_code, json.loads(response.body)["error"]

    assert refused("sk-proxy-not-a-real-key-000000000000000000000") == (
        401,
        {
            "message": "Incorrect API key provided: the proxy key is unknown or revoked.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        },
    )
    # A key the server knows (it has used it) and that is revoked since.
    secret = e2e.key()
    with e2e.client(secret).realtime.connect(model=MODEL) as conn:
        assert conn.recv().type == "session.created"
    key_revoke(api_key=ApiKey.objects.get(key_hash=key_hash(secret)))
    status, error = refused(secret)
    assert (status, error["code"]) == (401, "invalid_api_key")
    _, revoked = records_for(secret, 2)
    assert (revoked.endpoint, revoked.status_code, revoked.error_code) == (
        "realtime",
        401,
        "invalid_api_key",
    )

    limited = e2e.key("bob", allowed_models="gpt-4o-mini")
    assert refused(limited)[0] == 403
    budgeted = e2e.key("carol", budget_usd="1")
    status, error = refused(budgeted, url.replace(MODEL, "gpt-realtime-unheard-of"))
    assert (status, error["code"]) == (400, "model_not_priced")
    assert [r.status_code for r in records_for(limited, 1) + records_for(budgeted, 1)] == [403, 400]
    # No WebSocket but the Realtime API's; nothing reached "OpenAI" for any refusal.
    assert refused(budgeted, url.replace("/v1/realtime", "/v1/chat/completions"))[0] == 404
    assert [b["status"] for b in e2e.upstream.bills()["bills"]] == [101]


def test_the_browser_form_with_the_key_in_a_subprotocol(e2e):
    secret = e2e.key()
    url = f"ws://{e2e.proxy.url.removeprefix('http://')}/v1/realtime?model={MODEL}"
    with ws_connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{secret}"]) as ws:
        assert ws.subprotocol == "realtime"  # never the one carrying the key
        assert json.loads(ws.recv())["type"] == "session.created"
    [session] = records_for(secret, 1)
    assert session.status_code == 101


def test_a_client_that_hangs_up_mid_response_leaves_nothing_held(e2e):
    secret = e2e.key(budget_usd="1", period="total")
    client = e2e.client(secret)
    conn_manager = client.realtime.connect(model=MODEL)
    conn = conn_manager.enter()
    conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
    conn.conversation.item.create(item=user_text("Tell me a long story"))
    slow = {"fake_completion_tokens": "400", "fake_chunk_delay_ms": "20"}
    conn.response.create(response={"max_output_tokens": 1000, "metadata": slow})
    for event in conn:
        if event.type == "response.output_text.delta":
            response_id = event.response_id
            break
    conn.close()  # mid-response: hundreds of deltas still to come

    session, record = records_for(secret, 2)
    bill = wait_for(lambda: bills_by_id(e2e).get(response_id), what="the response's bill")
    assert bill["response_status"] == "cancelled"  # the proxy cancelled it upstream
    assert (record.status_code, record.error_code, record.client_disconnected) == (
        499,
        "client_disconnected",
        True,
    )
    assert record.completion_tokens == bill["completion_tokens"] < 400
    assert record.cost_usd == official_price(MODEL, bill) and not record.estimated
    assert session.status_code == 101
    assert_nothing_held(secret)


def test_upstream_gone_mid_response_is_billed_at_the_estimate(e2e):
    from relay.tokens import count_text

    secret = e2e.key(budget_usd="1", period="total")
    streamed = ""
    with e2e.client(secret).realtime.connect(model=MODEL) as conn:
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        conn.conversation.item.create(item=user_text("Tell me a story"))
        cut = {"fake_completion_tokens": "60", "fake_cut_after": "5"}
        conn.response.create(response={"max_output_tokens": 100, "metadata": cut})
        with pytest.raises(ConnectionClosed) as closed:
            for event in conn:
                if event.type == "response.output_text.delta":
                    streamed += event.delta

    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    session, record = records_for(secret, 2)
    [bill] = [b for b in e2e.upstream.bills()["bills"] if b["status"] == 200]
    assert bill["outcome"] == "cut"
    assert (record.status_code, record.error_code, record.estimated) == (
        502,
        "upstream_closed",
        True,
    )
    # The proxy's count: the input it reserved for, the text that went out.
    assert record.prompt_tokens >= bill["prompt_tokens"]
    assert record.completion_tokens == count_text(streamed, MODEL) == bill["completion_tokens"]
    assert record.cost_usd > 0
    assert (session.status_code, session.error_code) == (101, "upstream_closed")
    assert_nothing_held(secret)


def test_a_response_done_usage_keeps_its_cached_audio_apart():
    """The usage block of a GA `response.done`, as OpenAI's reference shows it: cached audio
    is priced at the cached audio rate, so it must not be folded into cached text or into
    the uncached audio."""
    from relay.realtime.settlement import realtime_usage

    usage = realtime_usage(
        {
            "total_tokens": 1300,
            "input_tokens": 1000,
            "output_tokens": 300,
            "input_token_details": {
                "text_tokens": 300,
                "audio_tokens": 700,
                "cached_tokens": 600,
                "cached_tokens_details": {"text_tokens": 200, "audio_tokens": 400},
            },
            "output_token_details": {"text_tokens": 100, "audio_tokens": 200},
        }
    )
    assert (usage.prompt, usage.cached, usage.audio_cached) == (1000, 600, 400)
    assert (usage.audio_input, usage.completion, usage.audio_output) == (300, 300, 200)
