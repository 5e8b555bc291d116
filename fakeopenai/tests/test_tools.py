"""Tool and output-schema definitions cost input tokens by the fake's own rule: 8 a
definition plus its name, description and compact JSON schema."""

from __future__ import annotations

import orjson

from fakeopenai.tests.calls import bill_of, n_tokens, openai_chat_count

HELLO = [{"role": "user", "content": "What is the weather in Paris?"}]
PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "The city"}},
    "required": ["city"],
}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def definition(name: str, description: str, schema: dict) -> int:
    """The fake's rule, written out."""
    return 8 + n_tokens(name) + n_tokens(description) + n_tokens(orjson.dumps(schema).decode())


WEATHER = definition("get_weather", "Current weather for a city", PARAMETERS)


def test_chat_function_tools_are_billed_as_input(client, fake):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": PARAMETERS,
        },
    }
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, tools=[tool, tool]
    )
    assert raw.parse().usage.prompt_tokens == openai_chat_count(HELLO) + 2 * WEATHER
    assert bill_of(fake, raw.headers)["prompt_tokens"] == openai_chat_count(HELLO) + 2 * WEATHER


def test_legacy_functions_and_a_json_schema_response_format_are_billed_too(client):
    usage = client.chat.completions.create(
        model="gpt-4o",
        messages=HELLO,
        functions=[
            {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": PARAMETERS,
            }
        ],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
        },
    ).usage
    assert usage.prompt_tokens == (
        openai_chat_count(HELLO) + WEATHER + definition("reply", "", SCHEMA)
    )


def test_responses_function_tools_and_text_format_are_billed_as_input(client):
    plain = client.responses.create(model="gpt-4.1", input="What is the weather in Paris?")
    with_tools = client.responses.create(
        model="gpt-4.1",
        input="What is the weather in Paris?",
        tools=[
            {
                "type": "function",
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": PARAMETERS,
                "strict": True,
            }
        ],
        text={"format": {"type": "json_schema", "name": "reply", "schema": SCHEMA}},
    )
    assert with_tools.usage.input_tokens == (
        plain.usage.input_tokens + WEATHER + definition("reply", "", SCHEMA)
    )
    assert WEATHER > 8
