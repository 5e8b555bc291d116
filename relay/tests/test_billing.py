"""Billing what OpenAI bills beyond tokens of text, end to end (official SDK → proxy → fake):
built-in tool calls at their fees, audio at audio rates, and what a strict budget asks for.
Expected costs are computed here from the price rows, not by the proxy's code."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.attacks import b64, wav
from tests.e2e import records_for

HELLO = [{"role": "user", "content": "Say hello to the proxy"}]
MILLION = Decimal(1_000_000)


def row(model: str):
    from usage.models import ModelPrice

    return ModelPrice.objects.filter(model=model).latest("effective_from")


def fee(tool: str, variant: str = "") -> Decimal:
    from usage.models import ToolPrice

    return ToolPrice.objects.get(tool=tool, variant=variant, model_patterns="*").usd_per_call


def text_cost(model: str, prompt: int, completion: int, cached: int = 0) -> Decimal:
    r = row(model)
    cached_rate = r.cached_input_per_1m if r.cached_input_per_1m is not None else r.input_per_1m
    return (
        (prompt - cached) * r.input_per_1m + cached * cached_rate + completion * r.output_per_1m
    ) / MILLION


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_web_search_calls_are_billed_at_their_fee(e2e, stream):
    # Each call may start a turn reading gpt-5's whole context: $1.36 reserved for two.
    secret = e2e.key(budget_usd="5")
    client = e2e.client(secret)
    request = {
        "model": "gpt-5",
        "input": "What happened today?",
        "tools": [{"type": "web_search"}],
        "max_tool_calls": 2,
        "max_output_tokens": 50,
        "extra_body": {"fake": {"tool_calls": 2}},
    }
    if stream:
        events = list(client.responses.create(**request, stream=True))
        response = events[-1].response
    else:
        response = client.responses.create(**request)
    assert [i.type for i in response.output].count("web_search_call") == 2
    [record] = records_for(secret, 1)
    usage = response.usage
    assert record.tool_calls == {"web_search": 2}
    expected = text_cost(
        "gpt-5",
        usage.input_tokens,
        usage.output_tokens,
        usage.input_tokens_details.cached_tokens,
    ) + 2 * fee("web_search")
    assert record.cost_usd == expected


def test_a_container_and_a_generated_image_are_billed_by_size(e2e):
    secret = e2e.key()
    client = e2e.client(secret)
    response = client.responses.create(
        model="gpt-4o",
        input="Plot it and draw it",
        tools=[
            {"type": "code_interpreter", "container": {"type": "auto", "memory_limit": "4g"}},
            {"type": "image_generation", "quality": "high", "size": "1024x1536"},
        ],
        max_tool_calls=1,
        max_output_tokens=50,
        extra_body={"fake": {"tool_calls": 1, "tool_type": "image_generation"}},
    )
    [record] = records_for(secret, 1)
    assert record.tool_calls == {"image_generation:gpt-image-1:high:1024x1536": 1}
    usage = response.usage
    expected = text_cost("gpt-4o-2024-08-06", usage.input_tokens, usage.output_tokens) + fee(
        "image_generation", "gpt-image-1:high:1024x1536"
    )
    assert record.response_model == "gpt-4o-2024-08-06"
    assert record.cost_usd == expected


def test_audio_in_and_out_are_billed_at_audio_rates(e2e):
    model = "gpt-4o-audio-preview-2025-06-03"
    secret = e2e.key(budget_usd="1")
    reply = e2e.client(secret).chat.completions.create(
        model="gpt-4o-audio-preview",  # an alias of the snapshot, which has audio rates
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Answer aloud."},
                    {"type": "input_audio", "input_audio": {"data": b64(wav(2)), "format": "wav"}},
                ],
            }
        ],
        max_completion_tokens=300,
        extra_body={"fake": {"response_model": model, "audio_output_tokens": 200}},
    )
    assert reply.choices[0].message.audio.transcript is not None
    [record] = records_for(secret, 1)
    usage = reply.usage
    audio_in = usage.prompt_tokens_details.audio_tokens
    audio_out = usage.completion_tokens_details.audio_tokens
    assert audio_in == 20 and audio_out > 0
    assert (record.audio_input_tokens, record.audio_output_tokens) == (audio_in, audio_out)
    r = row(model)
    expected = (
        (usage.prompt_tokens - audio_in) * r.input_per_1m
        + audio_in * r.audio_input_per_1m
        + (usage.completion_tokens - audio_out) * r.output_per_1m
        + audio_out * r.audio_output_per_1m
    ) / MILLION
    assert record.cost_usd == expected


# -- what a strict budget asks for --------------------------------------------------------------


def test_a_strict_budget_asks_for_the_output_maximum_by_name(e2e):
    secret = e2e.key(budget_usd="1")
    with pytest.raises(openai.BadRequestError) as refused:
        e2e.client(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert refused.value.code == "missing_required_parameter"
    assert refused.value.param == "max_completion_tokens"
    with pytest.raises(openai.BadRequestError) as tools:
        e2e.client(secret).responses.create(
            model="gpt-4o", input="news?", tools=[{"type": "web_search"}], max_output_tokens=20
        )
    assert tools.value.param == "max_tool_calls"
    records = records_for(secret, 2)
    assert [r.status_code for r in records] == [400, 400]
    assert {r.error_code for r in records} == {"missing_required_parameter"}


def test_an_estimate_budget_reserves_the_default_instead(e2e):
    secret = e2e.key(budget_usd="1", budget_mode="estimate")
    reply = e2e.client(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert reply.choices[0].message.content
    [record] = records_for(secret, 1)
    assert record.status_code == 200 and record.cost_usd > 0


def test_a_users_estimate_mode_applies_to_keys_that_inherit_it(e2e):
    secret = e2e.key(
        "carol",
        user_limits={"budget_usd": Decimal("1"), "budget_mode": "estimate"},
    )
    # The key has no budget of its own; its user's budget is in estimate mode.
    reply = e2e.client(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert reply.choices[0].message.content


def test_a_typo_in_the_model_name_is_named_on_a_budgeted_key(e2e):
    secret = e2e.key(budget_usd="1")
    with pytest.raises(openai.BadRequestError) as refused:
        e2e.client(secret).chat.completions.create(model="gpt-4o-mni", max_tokens=5, messages=HELLO)
    assert "'gpt-4o-mni' is unknown to this proxy" in refused.value.message
    assert "Check the model name" in refused.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"n": 10**12}, "n"), ({"max_tokens": 10**15}, "max_tokens"), ({"n": 2**63}, "n")],
)
def test_huge_numbers_get_openais_400_not_a_500(e2e, extra, param):
    secret = e2e.key(budget_usd="1")
    body = {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 5, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        e2e.client(secret).chat.completions.create(**body)
    assert refused.value.param == param
    assert "integer above maximum value" in refused.value.message
    [record] = records_for(secret, 1)
    assert record.status_code == 400


def test_conversations_and_files_by_id_are_refused_they_belong_to_the_shared_account(e2e):
    secret = e2e.key()
    client = e2e.client(secret)
    with pytest.raises(openai.BadRequestError) as conversation:
        client.responses.create(model="gpt-4o", input="hi", conversation="conv_123")
    assert conversation.value.param == "conversation"
    with pytest.raises(openai.BadRequestError) as file:
        client.responses.create(
            model="gpt-4o",
            input=[{"role": "user", "content": [{"type": "input_file", "file_id": "file-abc"}]}],
        )
    assert file.value.param == "file_id"
    assert len(records_for(secret, 2)) == 2


def test_tool_calls_of_a_stream_the_client_left_are_still_billed(e2e):
    """A client that hangs up after an image was generated still owes the image."""
    import httpx2 as httpx

    secret = e2e.key()
    body = {
        "model": "gpt-4o",
        "input": "draw a cat",
        "stream": True,
        "tools": [{"type": "image_generation", "quality": "high", "size": "1024x1536"}],
        "max_tool_calls": 1,
        "max_output_tokens": 50,
        "fake": {"tool_calls": 1, "stall_after": 0},
    }
    with httpx.stream(
        "POST",
        f"{e2e.proxy.url}/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if "response.output_item.done" in line:
                break  # the image is done; leave before the answer
    [record] = records_for(secret, 1)
    assert record.status_code == 499 and record.estimated
    assert record.tool_calls == {"image_generation:gpt-image-1:high:1024x1536": 1}
    assert record.cost_usd >= fee("image_generation", "gpt-image-1:high:1024x1536")
