"""Metering everything an OpenAI client sends, end to end: the official SDK → the proxy
process → the fake OpenAI. Each test checks what a user (or the operator paying the bill)
would notice: the answer, the record, its exact cost, and that the key's ledger agrees."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from decimal import Decimal

import openai
import pytest
from openai import OpenAI

from tests.e2e import records_for, wait_for
from tests.servers import running, start_proxy

HELLO = [{"role": "user", "content": "Say hello to the proxy"}]
# A long answer streamed slowly: still running when a client leaves after a few chunks.
SLOW_LONG = {"completion_tokens": 400, "chunk_delay_ms": 40}


# -- helpers ------------------------------------------------------------------------------------


def expected_cost(
    model: str, *, prompt: int, completion: int, cached: int = 0, tier: str = ""
) -> Decimal:
    """Cost from the price row in the database, computed here independently of the proxy."""
    from usage.models import ModelPrice

    row = ModelPrice.objects.filter(model=model).latest("effective_from")
    prefix = f"{tier}_" if tier else ""
    inp = getattr(row, f"{prefix}input_per_1m")
    out = getattr(row, f"{prefix}output_per_1m")
    cached_rate = getattr(row, f"{prefix}cached_input_per_1m")
    assert inp is not None and out is not None, f"{model} has no {tier or 'standard'} price"
    if cached_rate is None:
        cached_rate = inp  # no cached price: no discount
    return ((prompt - cached) * inp + cached * cached_rate + completion * out) / Decimal(1_000_000)


def assert_ledger_matches(secret: str, records: list) -> None:
    """The key's ledger spent exactly what its records cost, and holds nothing reserved."""
    from keys.models import ApiKey, QuotaLedger, key_hash, period_start

    api_key = ApiKey.objects.get(key_hash=key_hash(secret))
    ledger = QuotaLedger.objects.filter(
        api_key=api_key,
        period=api_key.period,
        period_start=period_start(api_key.period, records[0].created_at),
    ).first()
    spent = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
    if ledger is None:  # nothing was ever reserved: every request was refused before
        assert spent == 0
        return
    assert ledger.spent_usd == spent
    assert ledger.reserved_usd == 0 and ledger.reserved_tokens == 0


def wait_streams_closed(e2e, timeout: float = 3.0) -> float:
    """Seconds until the fake has no open stream: the proxy hung up on upstream."""
    started = time.monotonic()
    wait_for(
        lambda: e2e.upstream.stats()["open_streams"] == 0,
        timeout=timeout,
        what="the upstream stream to be closed",
    )
    return time.monotonic() - started


def count(text: str, model: str) -> int:
    from relay.tokens import count_text

    return count_text(text, model)


def http_get(url: str, secret: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- 1. the Responses API -------------------------------------------------------------------------


def test_responses_plain_prices_cached_and_reasoning_tokens_exactly(e2e):
    secret = e2e.key()
    client = e2e.client(secret)

    reply = client.responses.create(
        model="gpt-4o-mini",
        max_output_tokens=1000,
        input="Tell me about proxies and what they are good for",
        instructions="Be brief",
        extra_body={"fake": {"cached_tokens": 5, "reasoning_tokens": 4}},
    )

    assert reply.output_text and reply.model == "gpt-4o-mini-2024-07-18"
    usage = reply.usage
    assert usage.input_tokens_details.cached_tokens == 5
    assert usage.output_tokens_details.reasoning_tokens == 4
    [record] = records_for(secret, 1)
    assert (record.endpoint, record.model, record.response_model) == (
        "responses",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
    )
    assert record.response_id == reply.id and not record.stream and not record.estimated
    assert (record.prompt_tokens, record.cached_tokens) == (usage.input_tokens, 5)
    assert (record.completion_tokens, record.reasoning_tokens) == (usage.output_tokens, 4)
    # Reasoning tokens are inside output_tokens: billed once, at the output price.
    assert record.cost_usd == expected_cost(
        "gpt-4o-mini-2024-07-18",
        prompt=usage.input_tokens,
        completion=usage.output_tokens,
        cached=5,
    )
    assert_ledger_matches(secret, [record])


def test_responses_stream_relays_named_events_as_they_come_and_bills_the_completed_usage(e2e):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)
    delay = 0.06

    arrivals: list[tuple[float, str]] = []
    with client.responses.create(
        model="gpt-5-mini",
        max_output_tokens=1000,
        input="Stream me a reply",
        stream=True,
        extra_body={
            "fake": {
                "cached_tokens": 3,
                "reasoning_tokens": 6,
                "chunks": 4,
                "chunk_delay_ms": delay * 1000,
            }
        },
    ) as stream:
        for event in stream:
            arrivals.append((time.monotonic(), event.type))
            if event.type == "response.completed":
                completed = event.response

    kinds = [kind for _, kind in arrivals]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 4
    # Relayed event by event, not buffered: the deltas reach the client spread out in time.
    deltas = [at for at, kind in arrivals if kind == "response.output_text.delta"]
    assert deltas[-1] - deltas[0] >= 3 * delay * 0.7
    [record] = records_for(secret, 1)
    assert record.stream and not record.estimated and record.status_code == 200
    assert record.response_id == completed.id and record.response_model == "gpt-5-mini"
    usage = completed.usage
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage.input_tokens,
        usage.output_tokens,
    )
    assert (record.cached_tokens, record.reasoning_tokens) == (3, 6)
    assert record.cost_usd == expected_cost(
        "gpt-5-mini", prompt=usage.input_tokens, completion=usage.output_tokens, cached=3
    )
    assert_ledger_matches(secret, [record])


def test_responses_incomplete_is_billed_from_its_usage_plain_and_streamed(e2e):
    secret = e2e.key()
    client = e2e.client(secret)
    knobs = {"fake": {"terminal": "incomplete", "completion_tokens": 30}}

    plain = client.responses.create(
        model="gpt-4o-mini", max_output_tokens=1000, input="Go on", extra_body=knobs
    )
    events = list(
        client.responses.create(
            model="gpt-4o-mini",
            max_output_tokens=1000,
            input="Go on",
            stream=True,
            extra_body=knobs,
        )
    )

    assert plain.status == "incomplete"
    assert events[-1].type == "response.incomplete"
    streamed = events[-1].response
    records = records_for(secret, 2)
    for record, reply in zip(records, (plain, streamed), strict=True):
        assert not record.estimated and record.status_code == 200
        assert record.completion_tokens == reply.usage.output_tokens == 30
        assert record.cost_usd == expected_cost(
            "gpt-4o-mini-2024-07-18", prompt=reply.usage.input_tokens, completion=30
        )
    assert_ledger_matches(secret, records)


def test_background_responses_are_refused_with_the_reason(e2e):
    secret = e2e.key()
    client = e2e.client(secret)

    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="gpt-4o-mini", max_output_tokens=1000, input="later", background=True
        )

    assert refused.value.status_code == 400
    assert refused.value.param == "background"
    assert "background" in refused.value.message and "not supported" in refused.value.message
    assert e2e.upstream.stats()["requests"] == 0
    [record] = records_for(secret, 1)
    assert record.status_code == 400 and record.cost_usd == 0
    assert_ledger_matches(secret, [record])


def test_stored_responses_are_private_to_the_user_who_made_them(e2e):
    alice_secret, bob_secret = e2e.key("alice"), e2e.key("bob")
    alice, bob = e2e.client(alice_secret), e2e.client(bob_secret)

    made = alice.responses.create(
        model="gpt-4o-mini", max_output_tokens=1000, input="Remember the number 7"
    )
    # Continued at once, as chat loops do: the proxy must already know whose response it is.
    follow = alice.responses.create(
        model="gpt-4o-mini",
        max_output_tokens=1000,
        input="Which number?",
        previous_response_id=made.id,
    )

    assert alice.responses.retrieve(made.id).id == made.id
    assert follow.previous_response_id == made.id
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError) as refused:
        bob.responses.create(
            model="gpt-4o-mini",
            max_output_tokens=1000,
            input="Steal it",
            previous_response_id=made.id,
        )
    assert refused.value.param == "previous_response_id"
    # Only alice's three requests reached upstream.
    assert e2e.upstream.stats()["by_path"] == {"/v1/responses": 2, f"/v1/responses/{made.id}": 1}
    alice_records = records_for(alice_secret, 3)
    bob_records = records_for(bob_secret, 2)
    assert [r.status_code for r in alice_records] == [200, 200, 200]
    assert [r.status_code for r in bob_records] == [404, 404]
    assert alice_records[2].cost_usd == 0  # fetching a stored response costs nothing
    assert_ledger_matches(alice_secret, alice_records)
    assert_ledger_matches(bob_secret, bob_records)


def test_a_response_can_be_continued_at_once_through_another_server_process(e2e, server_logs):
    secret = e2e.key()
    first = e2e.client(secret)

    with running(start_proxy(e2e.upstream.url, server_logs)) as other:
        second = OpenAI(api_key=secret, base_url=other.v1, max_retries=0)
        for _ in range(3):
            made = first.responses.create(
                model="gpt-4o-mini", max_output_tokens=1000, input="Remember the number 7"
            )
            # The first process writes its record just after answering; the second must not
            # answer 404 in between.
            follow = second.responses.create(
                model="gpt-4o-mini",
                max_output_tokens=1000,
                input="Which number?",
                previous_response_id=made.id,
            )
            assert follow.previous_response_id == made.id
        records = records_for(secret, 6)

    assert all(r.status_code == 200 for r in records)
    assert_ledger_matches(secret, records)


# -- 2. legacy completions ----------------------------------------------------------------------


def test_legacy_completions_plain_and_streamed_are_priced_exactly(e2e):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)

    plain = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=50
    )
    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=1000, stream=True
        )
    )

    assert plain.choices[0].text
    streamed_text = "".join(c.choices[0].text for c in chunks)
    assert streamed_text == plain.choices[0].text
    assert all(c.choices for c in chunks), "a client that did not ask got the usage chunk"
    first, second = records_for(secret, 2)
    assert first.endpoint == second.endpoint == "completions"
    assert (first.prompt_tokens, first.completion_tokens) == (
        plain.usage.prompt_tokens,
        plain.usage.completion_tokens,
    )
    assert first.cost_usd == expected_cost(
        "gpt-3.5-turbo-instruct",
        prompt=plain.usage.prompt_tokens,
        completion=plain.usage.completion_tokens,
    )
    # The stream is billed from the usage the proxy asked upstream for, not estimated.
    assert second.stream and not second.estimated
    assert (second.prompt_tokens, second.completion_tokens) == (
        first.prompt_tokens,
        first.completion_tokens,
    )
    assert second.cost_usd == first.cost_usd
    assert_ledger_matches(secret, [first, second])


# -- 3. a client that leaves in the middle of a stream -------------------------------------------


def test_client_leaving_a_chat_stream_is_recorded_as_estimated_and_upstream_is_closed(e2e):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)

    received = ""
    with client.chat.completions.create(
        model="gpt-4o-mini",
        max_tokens=1000,
        messages=HELLO,
        stream=True,
        extra_body={"fake": SLOW_LONG},
    ) as stream:
        for i, chunk in enumerate(stream):
            received += chunk.choices[0].delta.content or ""
            if i == 5:
                break

    # The proxy hung up on upstream: it stops generating (and billing) tokens nobody reads.
    assert wait_streams_closed(e2e) < 2
    [record] = records_for(secret, 1)
    assert record.estimated and record.client_disconnected
    assert record.status_code == 499 and record.error_code == "client_disconnected"
    seen = count(received, "gpt-4o-mini")
    assert seen > 0
    # What the proxy had relayed when it noticed: what the client read, and a chunk or two more.
    assert seen <= record.completion_tokens <= seen + 6, (seen, record.completion_tokens)
    assert record.completion_tokens < 100, "billed for the whole answer the client never read"
    assert record.cost_usd == expected_cost(
        "gpt-4o-mini-2024-07-18", prompt=record.prompt_tokens, completion=record.completion_tokens
    )
    assert_ledger_matches(secret, [record])


def test_client_leaving_a_responses_stream_is_recorded_as_estimated_and_upstream_is_closed(e2e):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)

    received = ""
    with client.responses.create(
        model="gpt-4o-mini",
        max_output_tokens=1000,
        input="Tell me a long story",
        stream=True,
        extra_body={"fake": SLOW_LONG},
    ) as stream:
        deltas = 0
        for event in stream:
            if event.type == "response.output_text.delta":
                received += event.delta
                deltas += 1
                if deltas == 4:
                    break

    assert wait_streams_closed(e2e) < 2
    [record] = records_for(secret, 1)
    assert record.estimated and record.client_disconnected and record.status_code == 499
    assert record.response_id.startswith("resp_")  # known from response.created
    seen = count(received, "gpt-4o-mini")
    assert seen <= record.completion_tokens <= seen + 6, (seen, record.completion_tokens)
    assert record.prompt_tokens > 0
    assert record.cost_usd == expected_cost(
        "gpt-4o-mini-2024-07-18", prompt=record.prompt_tokens, completion=record.completion_tokens
    )
    assert_ledger_matches(secret, [record])


# -- 4. upstream streams that break ----------------------------------------------------------------


@pytest.mark.parametrize("knob", ["cut_after", "end_early_after"])
def test_broken_upstream_chat_stream_raises_in_the_sdk_and_is_estimated(e2e, knob):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret, timeout=10)

    received = ""
    started = time.monotonic()
    with pytest.raises(openai.APIError) as failed:
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=HELLO,
            stream=True,
            extra_body={"fake": {"completion_tokens": 60, knob: 8}},
        ):
            received += chunk.choices[0].delta.content or ""

    assert time.monotonic() - started < 5, "the client hung on a broken stream"
    assert "ended before it was complete" in failed.value.message
    assert received
    wait_streams_closed(e2e)
    [record] = records_for(secret, 1)
    assert record.estimated and not record.client_disconnected
    assert record.error_code == "stream_interrupted"
    assert abs(record.completion_tokens - count(received, "gpt-4o-mini")) <= 1
    assert record.cost_usd == expected_cost(
        "gpt-4o-mini-2024-07-18", prompt=record.prompt_tokens, completion=record.completion_tokens
    )
    assert_ledger_matches(secret, [record])


@pytest.mark.parametrize("knob", ["cut_after", "end_early_after"])
def test_broken_upstream_responses_stream_raises_in_the_sdk_and_is_estimated(e2e, knob):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret, timeout=10)

    received = ""
    with pytest.raises(openai.APIError):
        for event in client.responses.create(
            model="gpt-4o-mini",
            max_output_tokens=1000,
            input="Tell me a story",
            stream=True,
            extra_body={"fake": {"completion_tokens": 60, knob: 8}},
        ):
            if event.type == "response.output_text.delta":
                received += event.delta

    assert received
    wait_streams_closed(e2e)
    [record] = records_for(secret, 1)
    assert record.estimated and record.error_code == "stream_interrupted"
    assert abs(record.completion_tokens - count(received, "gpt-4o-mini")) <= 1
    assert record.cost_usd == expected_cost(
        "gpt-4o-mini-2024-07-18", prompt=record.prompt_tokens, completion=record.completion_tokens
    )
    assert_ledger_matches(secret, [record])


# -- 5. service tiers ------------------------------------------------------------------------------


def test_flex_and_priority_tiers_are_billed_at_their_rates(e2e):
    secret = e2e.key(budget_usd="5")
    client = e2e.client(secret)

    flex = client.chat.completions.create(
        model="gpt-5-mini",
        max_tokens=1000,
        messages=HELLO,
        service_tier="flex",
        extra_body={"fake": {"cached_tokens": 4, "completion_tokens": 40}},
    )
    # Asked for "auto", served at priority: the tier actually used is the one billed.
    priority = client.responses.create(
        model="gpt-4o-mini",
        max_output_tokens=1000,
        input="Quick!",
        service_tier="auto",
        extra_body={"fake": {"service_tier": "priority", "cached_tokens": 2}},
    )

    assert flex.service_tier == "flex" and priority.service_tier == "priority"
    flex_record, priority_record = records_for(secret, 2)
    assert flex_record.service_tier == "flex" and priority_record.service_tier == "priority"
    flex_cost = expected_cost(
        "gpt-5-mini",
        prompt=flex.usage.prompt_tokens,
        completion=flex.usage.completion_tokens,
        cached=4,
        tier="flex",
    )
    assert flex_record.cost_usd == flex_cost
    assert flex_cost < expected_cost(
        "gpt-5-mini",
        prompt=flex.usage.prompt_tokens,
        completion=flex.usage.completion_tokens,
        cached=4,
    )
    priority_cost = expected_cost(
        "gpt-4o-mini-2024-07-18",
        prompt=priority.usage.input_tokens,
        completion=priority.usage.output_tokens,
        cached=2,
        tier="priority",
    )
    assert priority_record.cost_usd == priority_cost
    assert priority_cost > expected_cost(
        "gpt-4o-mini-2024-07-18",
        prompt=priority.usage.input_tokens,
        completion=priority.usage.output_tokens,
        cached=2,
    )
    assert_ledger_matches(secret, [flex_record, priority_record])


# -- 6. models with no price -----------------------------------------------------------------------


def test_a_price_row_deleted_while_the_relay_caches_it_fails_no_request(e2e):
    """Each record keeps the price row it was billed with; a row gone from the table while a
    process still prices with its cached copy must not fail the request's reservation."""
    from django.db import connection

    from usage.models import ModelPrice

    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)
    client.chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=HELLO)
    row = ModelPrice.objects.get(model="gpt-4o-mini-2024-07-18")
    with connection.cursor() as cursor:  # as a bulk delete or another tool would, unchecked
        cursor.execute("DELETE FROM usage_modelprice WHERE id = %s", [row.pk])
    reply = client.chat.completions.create(model="gpt-4o-mini", max_tokens=5, messages=HELLO)
    assert reply.choices[0].message.content
    first, second = records_for(secret, 2)
    assert first.price_id == row.pk and second.status_code == 200


def test_unpriced_model_is_refused_on_a_budget_and_recorded_unpriced_without_one(e2e):
    budgeted = e2e.key("alice", budget_usd="1")
    free = e2e.key("bob")

    with pytest.raises(openai.BadRequestError) as refused:
        e2e.client(budgeted).chat.completions.create(
            model="my-custom-model-x", max_tokens=1000, messages=HELLO
        )
    reply = e2e.client(free).chat.completions.create(
        model="my-custom-model-x", max_tokens=1000, messages=HELLO
    )

    assert refused.value.code == "model_not_priced" and refused.value.param == "model"
    assert "'my-custom-model-x' is unknown to this proxy" in refused.value.message
    assert reply.choices[0].message.content
    [refusal] = records_for(budgeted, 1)
    assert refusal.status_code == 400 and refusal.error_code == "model_not_priced"
    [record] = records_for(free, 1)
    assert record.status_code == 200 and record.completion_tokens == reply.usage.completion_tokens
    assert record.cost_usd is None  # unpriced, never a silent $0
    status, listed = http_get(f"{e2e.proxy.url}/api/usage/", free)
    assert status == 200 and listed["results"][0]["cost_usd"] is None
    assert_ledger_matches(budgeted, [refusal])
    assert_ledger_matches(free, [record])


# -- 7. request and response bodies ----------------------------------------------------------------


def test_bodies_are_stored_capped_redacted_and_streams_as_text(e2e, server_logs):
    from keys.models import ApiKey, key_hash

    secret = e2e.key()
    quiet = e2e.key("bob", log_bodies=False)
    env = {
        "USAGE_LOG_BODIES": "true",
        "USAGE_BODY_MAX_BYTES": "1500",
        "USAGE_REDACT_FIELDS": "user,metadata",
    }
    with running(start_proxy(e2e.upstream.url, server_logs, extra_env=env)) as proxy:
        client = OpenAI(api_key=secret, base_url=proxy.v1, max_retries=0)
        client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=HELLO,
            user="alice@example.com",
            metadata={"customer": "ACME secret"},
        )
        client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=[{"role": "user", "content": "word " * 1000}],
        )
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=1000, messages=HELLO, stream=True
            )
        )
        # The Responses API echoes `user` and `metadata` in its answer: redacted there too.
        client.responses.create(
            model="gpt-4o-mini",
            max_output_tokens=1000,
            input="hi",
            user="alice@example.com",
            metadata={"customer": "ACME secret"},
        )
        OpenAI(api_key=quiet, base_url=proxy.v1, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", max_tokens=1000, messages=HELLO, user="bob@example.com"
        )
        records = records_for(secret, 4)
        [quiet_record] = records_for(quiet, 1)

    redacted, capped, streamed, echoed = records
    for stored in (echoed.request_body, echoed.response_body):
        assert "alice@example.com" not in stored and "ACME" not in stored
        assert '"user":"[redacted]"' in stored
    body = json.loads(redacted.request_body)
    assert body["messages"] == HELLO and body["model"] == "gpt-4o-mini"
    assert body["user"] == "[redacted]" and body["metadata"] == "[redacted]"
    assert "alice@example.com" not in redacted.request_body + redacted.response_body
    assert "ACME" not in redacted.request_body
    assert redacted.response_body  # the answer is kept too

    assert "[truncated" in capped.request_body and capped.request_body.endswith("bytes in all]")
    kept, _, _ = capped.request_body.partition("… [truncated")
    assert len(kept.encode()) <= 1500

    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "data:" not in streamed.response_body
    assert json.loads(streamed.response_body)["output_text"] == text

    # log_bodies=False on the key wins over the global setting.
    assert quiet_record.request_body == "" and quiet_record.response_body == ""
    assert ApiKey.objects.get(key_hash=key_hash(quiet)).log_bodies is False


def test_a_key_can_turn_body_logging_on_when_it_is_off_globally(e2e):
    loud = e2e.key(log_bodies=True)
    other = e2e.key("bob")

    e2e.client(loud).chat.completions.create(
        model="gpt-4o-mini", max_tokens=1000, messages=HELLO, user="u1"
    )
    e2e.client(other).chat.completions.create(
        model="gpt-4o-mini", max_tokens=1000, messages=HELLO, user="u2"
    )

    [record] = records_for(loud, 1)
    assert json.loads(record.request_body)["user"] == "u1"
    assert json.loads(record.response_body)["choices"][0]["message"]["content"]
    [default] = records_for(other, 1)
    assert default.request_body == "" and default.response_body == ""


# -- 8. moderations, and endpoints the proxy does not serve ----------------------------------------


def test_moderations_are_relayed_and_recorded_free(e2e):
    secret = e2e.key(budget_usd="1")
    client = e2e.client(secret)

    named = client.moderations.create(model="omni-moderation-latest", input=["first", "second"])
    # The SDK lets the model out; OpenAI then uses omni-moderation-latest.
    default = client.moderations.create(input="is this fine?")

    assert len(named.results) == 2 and named.results[0].flagged is False
    assert len(default.results) == 1
    records = records_for(secret, 2)
    for record in records:
        assert record.endpoint == "moderations" and record.status_code == 200
        assert record.cost_usd == 0  # free, and priced as such (not "unpriced")
    assert records[0].response_model == "omni-moderation-2024-09-26"
    assert_ledger_matches(secret, records)
