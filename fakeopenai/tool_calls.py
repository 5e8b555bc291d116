"""Built-in tools on Responses (web search, file search, code interpreter, image generation):
the calls the fake makes, their output items and stream events, and what they cost.

What the fake assumes OpenAI bills for them: unless `tool_choice` is "none", the model calls
the first built-in tool the request declares (or the one `tool_choice` names, or the
`tool_type` knob's) N times (the `tool_calls` knob, default 1, at most `max_tool_calls`).
Each call is one more turn of the model, which reads its whole input again, plus what the
call brought into the context:

    input_tokens = base_input × (calls + 1) + calls × content_tokens

where content_tokens is the `tool_content_tokens` knob, by default 2000 for web search and
file search (the pages or chunks found) and 0 for the others. The usage block keeps its
usual fields; the bill counts the calls by tool type. Output tokens are the reply's alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fakeopenai.errors import OpenAIError
from fakeopenai.knobs import BUILT_IN_TOOLS, Knobs
from fakeopenai.protocol import ident

SEARCH_CONTENT_TOKENS = 2000
_MAX_QUERY_CHARS = 100
_CODE = "print(2 + 2)"
# A 1×1 transparent PNG: the picture an image_generation call "made".
_PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
# The stream events between an item's output_item.added and .done, after the in_progress one.
_PROGRESS_EVENTS = {
    "web_search_call": ("searching", "completed"),
    "file_search_call": ("searching", "completed"),
    "code_interpreter_call": ("interpreting", "completed"),
    "image_generation_call": ("generating", "completed"),
}


def _family(tool_type: str) -> str:
    """A declared type's family: dated variants such as web_search_preview_2025_03_11 too."""
    for family in BUILT_IN_TOOLS:
        if tool_type == family or tool_type.startswith(family + "_"):
            return "web_search" if family.startswith("web_search") else family
    return ""


@dataclass(frozen=True)
class ToolPlan:
    """The built-in tool calls one request makes."""

    tool: dict[str, Any] | None = None
    calls: int = 0
    content_tokens: int = 0

    @property
    def tool_type(self) -> str:
        return self.tool["type"] if self.tool else ""

    def input_tokens(self, base_input: int) -> int:
        return base_input * (self.calls + 1) + self.calls * self.content_tokens

    def billed(self) -> dict[str, int]:
        return {self.tool_type: self.calls} if self.calls else {}


NO_CALLS = ToolPlan()


def plan_tool_calls(body: dict[str, Any], knobs: Knobs) -> ToolPlan:
    declared = body.get("tools") if isinstance(body.get("tools"), list) else []
    built_in = [
        tool
        for tool in declared
        if isinstance(tool, dict) and isinstance(tool.get("type"), str) and _family(tool["type"])
    ]
    choice = body.get("tool_choice")
    if choice == "none":
        return NO_CALLS
    if knobs.tool_type is not None:
        wanted = _family(knobs.tool_type)
        built_in = [tool for tool in built_in if _family(tool["type"]) == wanted]
        if not built_in:
            raise OpenAIError(
                400,
                f"fake.tool_type is {knobs.tool_type}, which the request's tools do not declare.",
                param="fake.tool_type",
            )
    elif isinstance(choice, dict) and isinstance(choice.get("type"), str):
        # tool_choice {"type": "web_search_preview"} forces that tool.
        forced = [tool for tool in built_in if tool["type"] == choice["type"]]
        built_in = forced or built_in
    if not built_in:
        return NO_CALLS
    calls = 1 if knobs.tool_calls is None else knobs.tool_calls
    limit = body.get("max_tool_calls")
    if isinstance(limit, int) and not isinstance(limit, bool):
        calls = min(calls, max(0, limit))
    tool = built_in[0]
    content = knobs.tool_content_tokens
    if content is None:
        searches = _family(tool["type"]) in ("web_search", "file_search")
        content = SEARCH_CONTENT_TOKENS if searches else 0
    return ToolPlan(tool=tool, calls=calls, content_tokens=content)


def _query(body: dict[str, Any]) -> str:
    """What the model searched for: the request's last piece of input text."""
    found = ""

    def visit(value: object) -> None:
        nonlocal found
        if isinstance(value, str):
            found = value or found
        elif isinstance(value, list):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            visit(value.get("content") if "content" in value else value.get("text"))

    visit(body.get("input"))
    return " ".join(found.split())[:_MAX_QUERY_CHARS] or "fake search"


def _call_item(tool: dict[str, Any], query: str) -> dict[str, Any]:
    family = _family(tool["type"])
    if family == "web_search":
        return {
            "type": "web_search_call",
            "id": ident("ws_", 48),
            "status": "completed",
            "action": {"type": "search", "query": query},
        }
    if family == "file_search":
        return {
            "type": "file_search_call",
            "id": ident("fs_", 48),
            "status": "completed",
            "queries": [query],
            "results": None,
        }
    if family == "code_interpreter":
        container = tool.get("container")
        return {
            "type": "code_interpreter_call",
            "id": ident("ci_", 48),
            "status": "completed",
            # A container given by id is used; "auto" ({"type": "auto"}) makes one.
            "container_id": container if isinstance(container, str) else ident("cntr_", 48),
            "code": _CODE,
            "outputs": None,
        }
    return {
        "type": "image_generation_call",
        "id": ident("ig_", 48),
        "status": "completed",
        "result": _PNG_1X1,
        "size": tool.get("size", "auto"),
        "quality": tool.get("quality", "auto"),
        "output_format": tool.get("output_format", "png"),
        "background": tool.get("background", "auto"),
        "revised_prompt": query,
    }


def call_items(plan: ToolPlan, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The output items of the planned calls, in the order they ran."""
    if not plan.tool:
        return []
    query = _query(body)
    return [_call_item(plan.tool, query) for _ in range(plan.calls)]


def added_item(item: dict[str, Any]) -> dict[str, Any]:
    """The item as `response.output_item.added` shows it, before the call ran."""
    started = {**item, "status": "in_progress"}
    if item["type"] == "image_generation_call":
        started["result"] = None
    return started


def progress_events(item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event kind, extra fields) between the item's output_item.added and .done."""
    kind = item["type"]
    events: list[tuple[str, dict[str, Any]]] = [(f"{kind}.in_progress", {})]
    if kind == "code_interpreter_call":
        events += [
            ("code_interpreter_call_code.delta", {"delta": item["code"]}),
            ("code_interpreter_call_code.done", {"code": item["code"]}),
        ]
    events += [(f"{kind}.{step}", {}) for step in _PROGRESS_EVENTS[kind]]
    return events
