"""Tools on the cloud leg: OpenAI's request fields out, streamed call fragments back in.

The provider streams a call in pieces (``delta.tool_calls[{index, id, function{name,
arguments}}]``, arguments split anywhere); :class:`ToolCallAssembler` joins them by index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge_agent.chat import Message, ToolCall
from edge_agent.cloud._errors import CloudProtocolError
from edge_agent.cloud._types import CloudChatRequest

__all__ = [
    "ToolCallAssembler",
    "ToolCallFragment",
    "message_body",
    "parse_fragments",
    "tool_fields",
]

_MAX_CALLS = 128
_MAX_ARGUMENT_CHARS = 1 << 20


@dataclass(frozen=True, slots=True)
class ToolCallFragment:
    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


def message_body(m: Message) -> dict[str, Any]:
    body: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        body["content"] = m.content or None
        body["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        body["tool_call_id"] = m.tool_call_id
    return body


def tool_fields(request: CloudChatRequest) -> dict[str, Any]:
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": json.loads(t.parameters_json),
            },
        }
        for t in request.tools
    ]
    choice: Any = request.tool_choice
    if choice not in ("auto", "none", "required"):
        choice = {"type": "function", "function": {"name": choice}}
    fields: dict[str, Any] = {"tools": tools, "tool_choice": choice}
    if not request.parallel_tool_calls:
        fields["parallel_tool_calls"] = False
    return fields


def parse_fragments(raw: object) -> tuple[ToolCallFragment, ...]:
    """``delta.tool_calls`` of one chunk (None or absent: no fragments)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CloudProtocolError("the cloud chunk has malformed tool_calls")
    out = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        function = function if function is not None else {}
        if not isinstance(item, dict) or not isinstance(function, dict):
            raise CloudProtocolError("the cloud chunk has a malformed tool call")
        index, call_id = item.get("index", 0), item.get("id") or ""
        name, arguments = function.get("name") or "", function.get("arguments") or ""
        if not isinstance(index, int) or not 0 <= index < _MAX_CALLS:
            raise CloudProtocolError("the cloud tool call has an invalid index")
        if not all(isinstance(v, str) for v in (call_id, name, arguments)):
            raise CloudProtocolError("the cloud tool call has non-text fields")
        out.append(ToolCallFragment(index, call_id, name, arguments))
    return tuple(out)


class ToolCallAssembler:
    """Joins streamed fragments into complete calls, in index order."""

    def __init__(self) -> None:
        self._parts: dict[int, list[str]] = {}  # index -> [id, name, arguments]

    def add(self, fragments: tuple[ToolCallFragment, ...]) -> None:
        for f in fragments:
            part = self._parts.setdefault(f.index, ["", "", ""])
            part[0] = part[0] or f.id
            part[1] = part[1] or f.name
            part[2] += f.arguments
            if len(part[2]) > _MAX_ARGUMENT_CHARS:
                raise CloudProtocolError("the cloud tool call arguments are too long")

    def calls(self) -> tuple[ToolCall, ...]:
        # Imported here: edge_agent.toolcalls imports the engine package, which imports the
        # config, which imports this package.
        from edge_agent.toolcalls import new_tool_call_id

        out = []
        for _, (call_id, name, arguments) in sorted(self._parts.items()):
            if not name:
                raise CloudProtocolError("the cloud tool call has no function name")
            # A provider that sends no id still gets its call answered: give it one.
            out.append(ToolCall(call_id or new_tool_call_id(), name, arguments or "{}"))
        return tuple(out)
