"""Tool and output-schema definitions, which OpenAI writes into the prompt and bills as input.

What the fake assumes OpenAI bills for them (its own rule: OpenAI does not publish one, and
the proxy's estimate is free to differ, only never to be 0):

- each function tool (chat `tools` of type function, the legacy chat `functions`, Responses
  tools of type function) and each custom tool: 8 tokens, plus the tokens of its name, its
  description and the compact JSON of its parameters (a custom tool: of its format);
- a JSON schema for the output (chat `response_format` or Responses `text.format` of type
  json_schema): the same, with the schema in place of the parameters;
- built-in tools (web search, file search, …) cost nothing to declare: they cost when they
  run (`fakeopenai.tool_calls`).
"""

from __future__ import annotations

from typing import Any

import orjson

from fakeopenai.counting import count_text

TOOL_OVERHEAD_TOKENS = 8


def _definition_tokens(definition: dict[str, Any], schema_field: str, model: str) -> int:
    total = TOOL_OVERHEAD_TOKENS
    for field in ("name", "description"):
        if isinstance(definition.get(field), str):
            total += count_text(definition[field], model)
    if definition.get(schema_field) is not None:
        total += count_text(orjson.dumps(definition[schema_field]).decode(), model)
    return total


def _tool_tokens(tool: object, model: str) -> int:
    if not isinstance(tool, dict):
        return 0
    kind = tool.get("type")
    if kind == "function":
        # Chat nests the definition in `function`; Responses has it flat.
        definition = tool["function"] if isinstance(tool.get("function"), dict) else tool
        return _definition_tokens(definition, "parameters", model)
    if kind == "custom":
        definition = tool["custom"] if isinstance(tool.get("custom"), dict) else tool
        return _definition_tokens(definition, "format", model)
    return 0


def _schema_tokens(output_format: object, model: str) -> int:
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        return 0
    # Chat nests it in `json_schema`; Responses' text.format has it flat.
    nested = output_format.get("json_schema")
    definition = nested if isinstance(nested, dict) else output_format
    return _definition_tokens(definition, "schema", model)


def definition_tokens(body: dict[str, Any], model: str) -> int:
    """The input tokens of a chat or Responses request's tool and schema definitions."""
    total = 0
    for field in ("tools", "functions"):
        if isinstance(body.get(field), list):
            for tool in body[field]:
                if field == "functions" and isinstance(tool, dict):
                    total += _definition_tokens(tool, "parameters", model)
                else:
                    total += _tool_tokens(tool, model)
    total += _schema_tokens(body.get("response_format"), model)
    text = body.get("text")
    if isinstance(text, dict):
        total += _schema_tokens(text.get("format"), model)
    return total
