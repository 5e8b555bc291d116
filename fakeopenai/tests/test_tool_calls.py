"""Built-in tools on Responses: the fake makes the calls in OpenAI's shapes, and each call
bills the input again (plus what a search brought in), as another turn of the model."""

from __future__ import annotations

import base64

import orjson
import pytest
from openai.types.responses import Response

from fakeopenai.tests.calls import bill_of, post

QUESTION = "Who won the match yesterday?"


def base_input(client, model: str = "gpt-4.1") -> int:
    return client.responses.create(model=model, input=QUESTION).usage.input_tokens


def test_a_web_search_is_an_output_item_and_a_turn_that_rereads_the_input(client, fake):
    base = base_input(client)
    raw = client.responses.with_raw_response.create(
        model="gpt-4.1", input=QUESTION, tools=[{"type": "web_search"}]
    )
    reply = Response.model_validate(raw.parse().model_dump())
    search, message = reply.output
    assert search.type == "web_search_call" and search.id.startswith("ws_")
    assert search.status == "completed" and search.action.type == "search"
    assert search.action.query == QUESTION
    assert message.type == "message" and reply.output_text
    # Two turns read the input; the search brought 2000 tokens of pages.
    assert reply.usage.input_tokens == base * 2 + 2000
    bill = bill_of(fake, raw.headers)
    assert bill["tool_calls"] == {"web_search": 1}
    assert bill["prompt_tokens"] == base * 2 + 2000


def test_the_number_of_calls_is_a_knob_capped_by_max_tool_calls(client, fake):
    base = base_input(client)
    raw = client.responses.with_raw_response.create(
        model="gpt-4.1",
        input=QUESTION,
        tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}],
        max_tool_calls=2,
        extra_body={"fake": {"tool_calls": 5, "tool_content_tokens": 300}},
    )
    reply = raw.parse()
    calls = [item for item in reply.output if item.type == "file_search_call"]
    assert len(calls) == 2 and calls[0].queries == [QUESTION] and calls[0].results is None
    assert reply.usage.input_tokens == base * 3 + 2 * 300
    assert bill_of(fake, raw.headers)["tool_calls"] == {"file_search": 2}


def test_tool_choice_none_makes_no_call_and_costs_the_input_once(client, fake):
    base = base_input(client)
    raw = client.responses.with_raw_response.create(
        model="gpt-4.1", input=QUESTION, tools=[{"type": "web_search"}], tool_choice="none"
    )
    reply = raw.parse()
    assert [item.type for item in reply.output] == ["message"]
    assert reply.usage.input_tokens == base
    assert bill_of(fake, raw.headers)["tool_calls"] == {}


def test_code_interpreter_and_image_generation_calls_in_openais_shapes(client, fake):
    base = base_input(client)
    tools = [
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "image_generation", "size": "1024x1536", "quality": "high"},
    ]
    code = client.responses.create(model="gpt-4.1", input=QUESTION, tools=tools)
    call = code.output[0]
    assert call.type == "code_interpreter_call" and call.id.startswith("ci_")
    assert call.container_id.startswith("cntr_") and call.code and call.outputs is None
    assert code.usage.input_tokens == base * 2  # no content brought in by default

    raw = client.responses.with_raw_response.create(
        model="gpt-4.1",
        input=QUESTION,
        tools=tools,
        extra_body={"fake": {"tool_type": "image_generation"}},
    )
    image = raw.parse().output[0]
    assert image.type == "image_generation_call" and image.id.startswith("ig_")
    assert base64.b64decode(image.result).startswith(b"\x89PNG")
    assert (image.size, image.quality, image.output_format) == ("1024x1536", "high", "png")
    assert bill_of(fake, raw.headers)["tool_calls"] == {"image_generation": 1}
    defaults = client.responses.create(
        model="gpt-4.1", input=QUESTION, tools=[{"type": "image_generation"}]
    ).output[0]
    assert (defaults.size, defaults.quality) == ("auto", "auto")


def test_a_streamed_search_emits_its_item_events_before_the_message(client, fake):
    base = base_input(client)
    with client.responses.stream(
        model="gpt-4.1",
        input=QUESTION,
        tools=[{"type": "web_search_preview"}],
        extra_body={"fake": {"tool_calls": 2}},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    searches = [e for e in events if e.type == "response.output_item.added"][:2]
    assert [e.item.type for e in searches] == ["web_search_call"] * 2
    assert searches[0].item.status == "in_progress"
    assert kinds.count("response.web_search_call.searching") == 2
    assert kinds.count("response.web_search_call.completed") == 2
    assert kinds.index("response.web_search_call.completed") < kinds.index(
        "response.output_text.delta"
    )
    assert [item.type for item in final.output] == ["web_search_call"] * 2 + ["message"]
    assert final.usage.input_tokens == base * 3 + 2 * 2000


def test_tool_type_must_name_a_declared_built_in_tool(fake):
    for knobs in ({"tool_type": "file_search"}, {"tool_type": "browser"}):
        status, headers, body = post(
            fake,
            "/responses",
            {"model": "gpt-4.1", "input": "x", "tools": [{"type": "web_search"}], "fake": knobs},
        )
        assert status == 400 and orjson.loads(body)["error"]["param"] == "fake.tool_type"
        assert bill_of(fake, headers)["tool_calls"] == {}


@pytest.mark.parametrize("tool", [{"type": "function", "name": "f", "parameters": {}}, None])
def test_no_built_in_tool_means_no_call(client, tool):
    reply = client.responses.create(
        model="gpt-4.1",
        input=QUESTION,
        tools=[tool] if tool else [],
        extra_body={"fake": {"tool_calls": 3}},
    )
    assert [item.type for item in reply.output] == ["message"]
