"""OpenAI request bodies → ChatSpec, ChatChunks → OpenAI objects. Translation only.

Every refusal is an InvalidArgument naming the field as the client spelled it
(``messages[1].content``, ``tools[0].function.name``); an unknown model is a NotFound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edge_agent.chat import ChatChunk, ChatSpec, DataClass, RoutePreference
from edge_agent.engine import Message, ToolCall, ToolSpec
from edge_agent.errors import InvalidArgument, NotFound
from edge_agent.openai_api._schema import (
    ChatCompletionRequest,
    FunctionCallOut,
    MessageIn,
    ProvenanceOut,
    TextPart,
    TimingOut,
    ToolCallOut,
    UsageOut,
    field_names,
)
from edge_agent.toolcalls import MAX_TOOLS, check_conversation, check_tool_name, tool_parameters

if TYPE_CHECKING:
    from edge_agent.config import EngineConfig

__all__ = [
    "HEADER_DEADLINE",
    "ModelNames",
    "deadline_from_headers",
    "invalid_from_validation",
    "provenance_out",
    "spec_from_request",
    "timing_out",
    "tool_calls_out",
    "usage_out",
]

_FIELDS = field_names()
_MAX_SCHEMA_CHARS = 64 * 1024
_MAX_SEED = 2**63 - 1
_CLASSES = {
    "public": DataClass.PUBLIC,
    "internal": DataClass.INTERNAL,
    "confidential": DataClass.CONFIDENTIAL,
    "restricted": DataClass.RESTRICTED,
}
_ROUTES = {
    "auto": RoutePreference.AUTO,
    "local_only": RoutePreference.LOCAL_ONLY,
    "large_model": RoutePreference.LARGE_MODEL,
}
HEADER_DATA_CLASS = "x-edge-data-class"
HEADER_ROUTE = "x-edge-route"
HEADER_PRIORITY = "x-edge-priority"
HEADER_DEADLINE = "x-edge-deadline-ms"
_MAX_DEADLINE_MS = 24 * 3600 * 1000


def deadline_from_headers(headers: Mapping[str, str], now: float) -> float | None:
    """``X-Edge-Deadline-Ms`` (gRPC's deadline for HTTP) as a ``time.monotonic()`` instant."""
    value = headers.get(HEADER_DEADLINE)
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= _MAX_DEADLINE_MS:
        raise InvalidArgument(
            "X-Edge-Deadline-Ms", f"must be a whole number of milliseconds, 1 to {_MAX_DEADLINE_MS}"
        )
    return now + int(value) / 1000


@dataclass(frozen=True, slots=True)
class ModelNames:
    """What ``model`` may name: the local model, or a hub id (``org/model[:suffix]``)."""

    local: str


def invalid_from_validation(exc: ValidationError) -> InvalidArgument:
    """The first pydantic error as a field error (``messages[0].role: …``)."""
    error = exc.errors(include_url=False)[0]
    parts: list[str] = []
    for item in error["loc"]:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in _FIELDS:  # union member tags ("str", "list[TextPart]") are not fields
            parts.append(f".{item}" if parts else item)
    field = "".join(parts) or "body"
    message = str(error.get("msg", "is invalid"))
    if error.get("type") == "missing":
        message = "is required"
    return InvalidArgument(field, message[:1].lower() + message[1:])


def _text(field: str, content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    for i, part in enumerate(content):
        if part.type != "text":
            raise InvalidArgument(f"{field}[{i}].type", "only text parts are supported")
        out.append(part.text)
    return "".join(out)


def _message(i: int, m: MessageIn, limits: EngineConfig) -> Message:
    field = f"messages[{i}]"
    content = _text(f"{field}.content", m.content)
    if len(content) > limits.max_message_chars:
        raise InvalidArgument(
            f"{field}.content", f"longer than {limits.max_message_chars} characters"
        )
    if "\x00" in content:
        raise InvalidArgument(f"{field}.content", "must not contain NUL characters")
    role = "system" if m.role == "developer" else m.role
    if role == "tool" and not m.tool_call_id:
        raise InvalidArgument(f"{field}.tool_call_id", "is required for a tool message")
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
    return Message(role, content, calls, m.tool_call_id or "")


def _messages(req: ChatCompletionRequest, limits: EngineConfig) -> tuple[Message, ...]:
    if not req.messages:
        raise InvalidArgument("messages", "must contain at least one message")
    if len(req.messages) > limits.max_messages:
        raise InvalidArgument("messages", f"at most {limits.max_messages} messages")
    out = tuple(_message(i, m, limits) for i, m in enumerate(req.messages))
    check_conversation(out, arguments_field="function.arguments")
    return out


def _tools(req: ChatCompletionRequest) -> tuple[ToolSpec, ...]:
    if not req.tools:
        return ()
    if len(req.tools) > MAX_TOOLS:
        raise InvalidArgument("tools", f"at most {MAX_TOOLS} tools")
    out: list[ToolSpec] = []
    seen: set[str] = set()
    for i, t in enumerate(req.tools):
        f = t.function
        check_tool_name(f"tools[{i}].function.name", f.name, seen)
        params = f.parameters if f.parameters is not None else {}
        schema = tool_parameters(f"tools[{i}].function.parameters", params)
        out.append(ToolSpec(f.name, f.description, schema))
    return tuple(out)


def _tool_choice(req: ChatCompletionRequest, tools: tuple[ToolSpec, ...]) -> str:
    choice = req.tool_choice
    if choice is None:
        return "auto"
    name = choice if isinstance(choice, str) else choice.function.name
    if name != "none" and not tools:
        raise InvalidArgument("tool_choice", "needs tools")
    if isinstance(choice, str):
        return choice
    if name not in {t.name for t in tools}:
        raise InvalidArgument("tool_choice.function.name", f"names no tool: {name!r}")
    return name


def _json_schema(req: ChatCompletionRequest) -> str | None:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json.dumps({"type": "object"})
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise InvalidArgument("response_format.json_schema.schema", "is required")
    schema = fmt.json_schema.schema_
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    if len(text) > _MAX_SCHEMA_CHARS:
        raise InvalidArgument("response_format.json_schema.schema", "too large")
    if not schema:
        raise InvalidArgument("response_format.json_schema.schema", "must not be empty")
    return text


def _finite(
    name: str, value: float | None, low: float, high: float, low_open: bool = False
) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        raise InvalidArgument(name, f"must be in {'(' if low_open else '['}{low}, {high}]")
    return float(value)


def _stop(req: ChatCompletionRequest, limits: EngineConfig) -> tuple[str, ...]:
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > limits.max_stop_strings:
        raise InvalidArgument("stop", f"at most {limits.max_stop_strings} stop strings")
    for i, s in enumerate(stop):
        if not s or len(s) > 256:
            name = "stop" if isinstance(req.stop, str) else f"stop[{i}]"
            raise InvalidArgument(name, "must be 1 to 256 characters")
    return stop


def _extension(field: str, body: str | None, headers: Mapping[str, str], header: str) -> str | None:
    """A body field or its X-Edge-* header; both set must agree."""
    value = headers.get(header)
    if value is not None:
        value = value.strip().lower()
        if body is not None and body != value:
            raise InvalidArgument(field, f"the body and the {header} header disagree")
    return body if body is not None else value


def _max_tokens(req: ChatCompletionRequest) -> int | None:
    both = req.max_tokens is not None and req.max_completion_tokens is not None
    if both and req.max_tokens != req.max_completion_tokens:
        raise InvalidArgument("max_completion_tokens", "disagrees with max_tokens")
    value = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if value is not None and value <= 0:
        name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        raise InvalidArgument(name, "must be positive")
    return value


def _unsupported(req: ChatCompletionRequest) -> None:
    if req.n is not None and req.n != 1:
        raise InvalidArgument("n", "only n = 1 is supported")
    if req.logprobs:
        raise InvalidArgument("logprobs", "is not supported")
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(req, name)
        if value is not None and value != 0:
            raise InvalidArgument(name, "is not supported (only 0)")


def _route(req: ChatCompletionRequest, names: ModelNames, route: str | None) -> tuple[str, str]:
    """(spec.model, route): a hub id asks for the cloud under policy; the local name stays."""
    model = req.model.strip()
    if len(model) > 256:
        raise InvalidArgument("model", "too long")
    if model == names.local:
        return "", route or "auto"
    if "/" in model:
        # The provider suffix (:fastest, :cheapest, :<provider>) is the fleet policy's choice.
        return model.split(":", 1)[0], route or "large_model"
    raise NotFound(f"model {model!r} does not exist on this box (GET /v1/models lists them)")


def spec_from_request(
    req: ChatCompletionRequest,
    limits: EngineConfig,
    names: ModelNames,
    headers: Mapping[str, str],
) -> ChatSpec:
    """Validate what the body and X-Edge-* headers ask for; model-dependent checks come later."""
    _unsupported(req)
    messages = _messages(req, limits)
    max_tokens = _max_tokens(req)
    min_tokens = req.min_tokens or 0
    if min_tokens < 0 or (max_tokens is not None and min_tokens > max_tokens):
        raise InvalidArgument("min_tokens", "must be in [0, max_tokens]")
    if req.top_k is not None and not 0 <= req.top_k <= 1000:
        raise InvalidArgument("top_k", "must be in [0, 1000]")
    if req.seed is not None and not 0 <= req.seed <= _MAX_SEED:
        raise InvalidArgument("seed", "must be non-negative")
    data_class = _extension("data_class", req.data_class, headers, HEADER_DATA_CLASS)
    if data_class is not None and data_class not in _CLASSES:
        raise InvalidArgument("data_class", f"must be one of {', '.join(_CLASSES)}")
    route = _extension("route", req.route, headers, HEADER_ROUTE)
    if route is not None and route not in _ROUTES:
        raise InvalidArgument("route", f"must be one of {', '.join(_ROUTES)}")
    priority_text = _extension(
        "priority",
        str(req.priority) if req.priority is not None else None,
        headers,
        HEADER_PRIORITY,
    )
    try:
        priority = int(priority_text) if priority_text is not None else 0
    except ValueError:
        raise InvalidArgument("priority", "must be an integer") from None
    if not -10 <= priority <= 10:
        raise InvalidArgument("priority", "must be in [-10, 10]")
    model, route = _route(req, names, route)
    tools = _tools(req)
    tool_choice = _tool_choice(req, tools)
    json_schema = _json_schema(req)
    if json_schema is not None and tools and tool_choice not in ("auto", "none"):
        raise InvalidArgument("tool_choice", "cannot force a call together with response_format")
    temperature = _finite("temperature", req.temperature, 0.0, 2.0)
    return ChatSpec(
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        temperature=temperature if temperature is not None else 0.0,
        top_p=_finite("top_p", req.top_p, 0.0, 1.0, low_open=True),
        top_k=req.top_k,
        seed=req.seed,
        stop=_stop(req, limits),
        json_schema=json_schema,
        data_class=_CLASSES[data_class] if data_class else DataClass.UNSPECIFIED,
        route=_ROUTES[route],
        priority=priority,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=req.parallel_tool_calls is not False,
    )


def tool_calls_out(chunk: ChatChunk) -> list[ToolCallOut]:
    return [
        ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))
        for c in chunk.tool_calls
    ]


def usage_out(chunk: ChatChunk) -> UsageOut | None:
    u = chunk.usage
    if u is None:
        return None
    return UsageOut(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
    )


def provenance_out(chunk: ChatChunk) -> ProvenanceOut | None:
    p = chunk.provenance
    if p is None:
        return None
    return ProvenanceOut(
        destination=p.destination,
        model=p.model,
        model_version=p.model_version,
        execution_provider=p.execution_provider,
        cloud_provider=p.cloud_provider,
        decision_reason=p.decision_reason,
    )


def timing_out(chunk: ChatChunk) -> TimingOut | None:
    t = chunk.timing
    if t is None:
        return None
    return TimingOut(
        queue_ms=t.queue_ms, time_to_first_token_ms=t.time_to_first_token_ms, total_ms=t.total_ms
    )
