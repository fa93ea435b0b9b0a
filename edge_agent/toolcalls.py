"""Tool calls of the local model: forcing them with guidance, reading them back from its text.

Mistral's models answer with a call as ``[TOOL_CALLS]`` followed by a JSON list of
``{"name", "arguments"}`` objects (v7 tokenizers: Mistral Small 3), or as
``[TOOL_CALLS]name[ARGS]{...}`` (v11 and later). A model without that control token (the
demo model) may write the marker as text, or the bare list: both are read the same way.
Anything that does not parse into calls of the offered tools stays ordinary text, so a
reader never loses what the model said.

A forced call (``tool_choice`` ``required`` or a tool's name) is constrained by JSON-schema
guidance over the tools' parameter schemas; the answer is then the bare list.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Sequence
from typing import Any

from edge_agent.engine import Message, ToolCall, ToolSpec
from edge_agent.errors import InvalidArgument

__all__ = [
    "MAX_TOOLS",
    "TOOL_CALLS_MARKER",
    "ToolCallReader",
    "check_conversation",
    "check_tool_name",
    "compact_guidance",
    "forced_call_schema",
    "is_forced",
    "new_tool_call_id",
    "parse_tool_calls",
    "tool_parameters",
]

TOOL_CALLS_MARKER = "[TOOL_CALLS]"
_ARGS_MARKER = "[ARGS]"
# The bare JSON form, as a prefix the held-back start of an answer is compared with.
_BARE_START = '[{"name"'
_ID_CHARS = string.ascii_letters + string.digits
_ID_LENGTH = 9  # Mistral's tool-call ids: 9 alphanumerics
# llguidance's compact JSON: no optional whitespace, so a model cannot pad until max_tokens.
_COMPACT = {"whitespace_flexible": False}
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHOICE_WORDS = ("auto", "none", "required")
_MAX_SCHEMA_CHARS = 64 * 1024
MAX_TOOLS = 128


# -- request checks both APIs share (field names as the client spelled them) -------------


def check_tool_name(field: str, name: str, seen: set[str]) -> None:
    if not _TOOL_NAME.fullmatch(name) or name in _CHOICE_WORDS:
        raise InvalidArgument(
            field, "must be 1-64 letters, digits, '_' or '-' (and not auto, none or required)"
        )
    if name in seen:
        raise InvalidArgument(field, f"duplicate tool {name!r}")
    seen.add(name)


def tool_parameters(field: str, schema: object) -> str:
    """A tool's parameter schema as compact JSON text; it must describe an object."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise InvalidArgument(field, "must be a JSON Schema of type object")
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    if len(text) > _MAX_SCHEMA_CHARS:
        raise InvalidArgument(field, "too large")
    return text


def check_conversation(messages: Sequence[Message], arguments_field: str = "arguments") -> None:
    """Tool turns answer earlier calls; the model answers a user or a tool turn.

    ``arguments_field``: where a call's arguments sit in the API's message (OpenAI's
    ``function.arguments``, gRPC's ``arguments``), for the field an error names.
    """
    called: set[str] = set()
    for i, m in enumerate(messages):
        if m.tool_calls and m.role != "assistant":
            raise InvalidArgument(f"messages[{i}].tool_calls", "only assistant messages call")
        for j, call in enumerate(m.tool_calls):
            try:
                arguments = json.loads(call.arguments)
            except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
                arguments = None
            if not isinstance(arguments, dict):
                raise InvalidArgument(
                    f"messages[{i}].tool_calls[{j}].{arguments_field}", "must be a JSON object"
                )
            called.add(call.id)
        if m.role == "tool" and m.tool_call_id not in called:
            raise InvalidArgument(
                f"messages[{i}].tool_call_id", "answers no call of an earlier assistant message"
            )
        if m.role != "tool" and m.tool_call_id:
            raise InvalidArgument(f"messages[{i}].tool_call_id", "only tool messages answer a call")
    if messages[-1].role not in ("user", "tool"):
        raise InvalidArgument("messages", "the last message must be from the user or a tool")
    if not any(m.content.strip() for m in messages if m.role in ("user", "tool")):
        raise InvalidArgument("messages", "needs a non-empty user message")


def new_tool_call_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(_ID_LENGTH))


def is_forced(tool_choice: str) -> bool:
    return tool_choice not in ("auto", "none")


def compact_guidance(schema_json: str) -> str:
    """The schema with llguidance's compact-whitespace option (unless it sets its own)."""
    schema = json.loads(schema_json)
    if isinstance(schema, dict) and "x-guidance" not in schema:
        schema["x-guidance"] = _COMPACT
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def _parameters(tool: ToolSpec) -> dict[str, Any]:
    params = json.loads(tool.parameters_json)
    if not isinstance(params, dict) or not params:
        return {"type": "object"}
    if "properties" in params and "additionalProperties" not in params:
        # Guidance would otherwise let the model invent keys after the declared ones and
        # ramble inside them; the arguments still validate against the tool's own schema.
        params = {**params, "additionalProperties": False}
    return params


def forced_call_schema(tools: Sequence[ToolSpec], tool_choice: str, parallel: bool) -> str:
    """The guidance schema of an answer that must be a call (``required``) or one call of
    the named tool."""
    chosen = [t for t in tools if tool_choice == "required" or t.name == tool_choice]
    if not chosen:
        raise ValueError(f"tool_choice {tool_choice!r} names no offered tool")
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": _parameters(t)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    schema: dict[str, Any] = {
        "type": "array",
        "items": variants[0] if len(variants) == 1 else {"anyOf": variants},
        "minItems": 1,
        "x-guidance": _COMPACT,
    }
    if not parallel or tool_choice != "required":
        schema["maxItems"] = 1  # a named choice is one call of that tool, as OpenAI's
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def _decode_prefix(text: str) -> tuple[Any, str] | None:
    """The first JSON value of ``text`` and what follows it; None when there is none."""
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return value, text[end:]


def _call(item: object, allowed: set[str]) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    name, arguments = item.get("name"), item.get("arguments", {})
    if not isinstance(name, str) or name not in allowed:
        return None
    if isinstance(arguments, str):  # some models write the arguments as JSON text
        decoded = _decode_prefix(arguments)
        if decoded is None or decoded[1].strip():
            return None
        arguments = decoded[0]
    if not isinstance(arguments, dict):
        return None
    raw_id = item.get("id")
    call_id = (
        raw_id
        if isinstance(raw_id, str) and len(raw_id) == _ID_LENGTH and raw_id.isalnum()
        else new_tool_call_id()
    )
    text = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
    return ToolCall(id=call_id, name=name, arguments=text)


def _v11_calls(body: str) -> list[object] | None:
    """``name[ARGS]{...}`` segments, separated by further markers."""
    items: list[object] = []
    for segment in body.split(TOOL_CALLS_MARKER):
        name, sep, rest = segment.partition(_ARGS_MARKER)
        decoded = _decode_prefix(rest.strip()) if sep else None
        if decoded is None:
            return None
        items.append({"name": name.strip(), "arguments": decoded[0]})
    return items


def _complete_items(body: str) -> list[object]:
    """The complete elements at the start of a JSON list cut short (``[{…},{…},{"na``)."""
    items: list[object] = []
    rest = body.lstrip().removeprefix("[")
    while True:
        decoded = _decode_prefix(rest.lstrip())
        if decoded is None:
            return items
        items.append(decoded[0])
        rest = decoded[1].lstrip()
        if not rest.startswith(","):
            return items
        rest = rest[1:]


def parse_tool_calls(
    text: str, tools: Sequence[ToolSpec], tool_choice: str = "auto", *, cut: bool = False
) -> tuple[ToolCall, ...] | None:
    """The calls ``text`` makes, or None when it is not (entirely) a call of offered tools.

    ``cut``: the text is a guided list that max_tokens cut short; its complete calls count.
    """
    allowed = {t.name for t in tools}
    if is_forced(tool_choice) and tool_choice != "required":
        allowed &= {tool_choice}
    body = text.strip()
    items: list[object] | None
    if body.startswith(TOOL_CALLS_MARKER):
        body = body[len(TOOL_CALLS_MARKER) :].lstrip()
        if not body.startswith(("[", "{")):
            items = _v11_calls(body)
            body = ""
        else:
            items = None
    else:
        items = None
    if items is None and cut and body.startswith("["):
        items = _complete_items(body)
    if items is None:
        decoded = _decode_prefix(body)
        # Trailing text other than an end marker means the model was not only calling.
        if decoded is None or decoded[1].strip().removesuffix("</s>").strip():
            return None
        value = decoded[0]
        items = value if isinstance(value, list) else [value]
    calls = [_call(item, allowed) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return tuple(c for c in calls if c is not None)


class ToolCallReader:
    """Splits a streamed local answer into text deltas and, at its end, tool calls.

    The start of an answer is held back while it could still be a call (a prefix of the
    marker or of the bare list); once it cannot, it is released as text and everything
    after passes straight through. A call is only complete at the end of the answer.
    """

    def __init__(
        self,
        tools: Sequence[ToolSpec],
        tool_choice: str,
        parallel: bool,
        *,
        control_token: bool = False,
    ) -> None:
        self._tools = tuple(tools)
        self._choice = tool_choice
        self._parallel = parallel
        self._held: list[str] = []
        # "undecided" → "text" or "call"; a forced answer is a call from its first byte.
        # A model with a tool-call control token (Mistral's [TOOL_CALLS] id) says when its
        # calls start; its text never does, so text that reads like a call stays text.
        if is_forced(tool_choice):
            self._mode = "call"
        else:
            self._mode = "text" if control_token else "undecided"

    def feed(self, delta: str, *, after_control_token: bool = False) -> str:
        """The text to send now (empty while held back).

        ``after_control_token``: the delta follows the model's tool-call control token,
        which decodes to nothing; what was said before it stays the answer's text.
        """
        if after_control_token and self._mode != "call":
            before = "".join(self._held)
            self._held = [TOOL_CALLS_MARKER, delta]
            self._mode = "call"
            return before
        if self._mode == "text":
            return delta
        self._held.append(delta)
        if self._mode == "call":
            return ""
        # Whitespace does not decide (``[ {"name"`` is the bare list too).
        head = "".join("".join(self._held).split())
        markers = (TOOL_CALLS_MARKER, _BARE_START)
        if any(m.startswith(head) for m in markers):
            return ""  # still a possible start of a call
        if any(head.startswith(m) for m in markers):
            self._mode = "call"
            return ""
        self._mode = "text"
        out = "".join(self._held)
        self._held.clear()
        return out

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        """What was held back: ``("", calls)`` for a call, else ``(text, ())``."""
        text = "".join(self._held)
        self._held.clear()
        if self._mode != "call":
            return text, ()
        # A forced answer is guided: every complete element of a cut list is a valid call.
        calls = parse_tool_calls(text, self._tools, self._choice, cut=is_forced(self._choice))
        if not calls:
            return text, ()
        return "", calls if self._parallel else calls[:1]
