"""Translation between protobuf messages and domain objects, with field validation.

Every refusal is an InvalidArgument naming the field as the client spelled it
(``messages[2].role``, ``temperature``...).
"""

from __future__ import annotations

import json
import math

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent.chat import ChatChunk, ChatSpec, DataClass, RoutePreference
from edge_agent.config import EngineConfig
from edge_agent.engine import Message, ToolCall, ToolSpec
from edge_agent.errors import InvalidArgument
from edge_agent.toolcalls import MAX_TOOLS, check_conversation, check_tool_name, tool_parameters

__all__ = ["chat_spec_from_proto", "chunk_to_proto"]

_ROLES = ("system", "user", "assistant", "tool")
_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
}
_CHOICE_MODES = {
    pb.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    pb.TOOL_CHOICE_MODE_AUTO: "auto",
    pb.TOOL_CHOICE_MODE_NONE: "none",
    pb.TOOL_CHOICE_MODE_REQUIRED: "required",
}
_DESTINATION = {"local": pb.DESTINATION_LOCAL, "cloud": pb.DESTINATION_CLOUD}
_MAX_SCHEMA_CHARS = 64 * 1024
_MAX_SEED = 2**63 - 1


def _messages(request: pb.ChatRequest, limits: EngineConfig) -> tuple[Message, ...]:
    if not request.messages:
        raise InvalidArgument("messages", "must contain at least one message")
    if len(request.messages) > limits.max_messages:
        raise InvalidArgument("messages", f"at most {limits.max_messages} messages")
    out = []
    for i, m in enumerate(request.messages):
        if m.role not in _ROLES:
            raise InvalidArgument(f"messages[{i}].role", f"must be one of {', '.join(_ROLES)}")
        if len(m.content) > limits.max_message_chars:
            raise InvalidArgument(
                f"messages[{i}].content", f"longer than {limits.max_message_chars} characters"
            )
        if "\x00" in m.content:
            raise InvalidArgument(f"messages[{i}].content", "must not contain NUL characters")
        calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls)
        out.append(Message(m.role, m.content, calls, m.tool_call_id))
    check_conversation(out)
    return tuple(out)


def _tools(request: pb.ChatRequest) -> tuple[ToolSpec, ...]:
    if len(request.tools) > MAX_TOOLS:
        raise InvalidArgument("tools", f"at most {MAX_TOOLS} tools")
    out: list[ToolSpec] = []
    seen: set[str] = set()
    for i, t in enumerate(request.tools):
        check_tool_name(f"tools[{i}].name", t.name, seen)
        try:
            params = json.loads(t.parameters_json) if t.parameters_json else {}
        except (ValueError, RecursionError):
            raise InvalidArgument(f"tools[{i}].parameters_json", "is not valid JSON") from None
        schema = tool_parameters(f"tools[{i}].parameters_json", params)
        out.append(ToolSpec(t.name, t.description, schema))
    return tuple(out)


def _tool_choice(request: pb.ChatRequest, tools: tuple[ToolSpec, ...]) -> str:
    choice = request.tool_choice
    if choice.mode == pb.TOOL_CHOICE_MODE_FUNCTION:
        if choice.function_name not in {t.name for t in tools}:
            raise InvalidArgument("tool_choice.function_name", "names no tool of this request")
        return choice.function_name
    if choice.mode not in _CHOICE_MODES:
        raise InvalidArgument("tool_choice.mode", "unknown tool choice")
    if choice.function_name:
        raise InvalidArgument("tool_choice.function_name", "only for TOOL_CHOICE_MODE_FUNCTION")
    mode = _CHOICE_MODES[choice.mode]
    if mode == "required" and not tools:
        raise InvalidArgument("tool_choice", "needs tools")
    return mode


def _finite(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> float:
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidArgument(name, f"must be in {bracket}{low}, {high}]")
    return value


def _json_schema(request: pb.ChatRequest) -> str | None:
    fmt = request.response_format
    if fmt.type in (pb.RESPONSE_FORMAT_TYPE_UNSPECIFIED, pb.RESPONSE_FORMAT_TYPE_TEXT):
        if fmt.json_schema:
            raise InvalidArgument("response_format.type", "set JSON_SCHEMA to use json_schema")
        return None
    if fmt.type != pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        raise InvalidArgument("response_format.type", "unknown response format")
    if len(fmt.json_schema) > _MAX_SCHEMA_CHARS:
        raise InvalidArgument("response_format.json_schema", "too large")
    try:
        schema = json.loads(fmt.json_schema)
    except ValueError as exc:
        raise InvalidArgument("response_format.json_schema", "is not valid JSON") from exc
    if not isinstance(schema, dict) or not schema:
        raise InvalidArgument("response_format.json_schema", "must be a non-empty JSON object")
    allowed_types = {"object", "array", "string", "number", "integer", "boolean", "null"}
    declared = schema.get("type")
    types = declared if isinstance(declared, list) else [declared] if declared is not None else []
    if any(t not in allowed_types for t in types):
        raise InvalidArgument("response_format.json_schema", "has an unknown 'type'")
    return json.dumps(schema, separators=(",", ":"))


def chat_spec_from_proto(request: pb.ChatRequest, limits: EngineConfig) -> ChatSpec:
    """Validate the shape of a ChatRequest; model-dependent checks happen later."""
    messages = _messages(request, limits)
    max_tokens = None
    if request.HasField("max_tokens"):
        if request.max_tokens <= 0:
            raise InvalidArgument("max_tokens", "must be positive")
        max_tokens = request.max_tokens
    min_tokens = 0
    if request.HasField("min_tokens"):
        if request.min_tokens < 0 or (max_tokens is not None and request.min_tokens > max_tokens):
            raise InvalidArgument("min_tokens", "must be in [0, max_tokens]")
        min_tokens = request.min_tokens
    temperature = 0.0
    if request.HasField("temperature"):
        temperature = _finite("temperature", request.temperature, 0.0, 2.0)
    top_p = None
    if request.HasField("top_p"):
        top_p = _finite("top_p", request.top_p, 0.0, 1.0, low_open=True)
    top_k = None
    if request.HasField("top_k"):
        if not 0 <= request.top_k <= 1000:
            raise InvalidArgument("top_k", "must be in [0, 1000]")
        top_k = request.top_k
    seed = None
    if request.HasField("seed"):
        if not 0 <= request.seed <= _MAX_SEED:
            raise InvalidArgument("seed", "must be non-negative")
        seed = request.seed
    if len(request.stop) > limits.max_stop_strings:
        raise InvalidArgument("stop", f"at most {limits.max_stop_strings} stop strings")
    for i, s in enumerate(request.stop):
        if not s or len(s) > 256:
            raise InvalidArgument(f"stop[{i}]", "must be 1 to 256 characters")
    if request.data_class not in DataClass._value2member_map_:
        raise InvalidArgument("data_class", "unknown data class")
    if request.route not in RoutePreference._value2member_map_:
        raise InvalidArgument("route", "unknown route preference")
    if not -10 <= request.priority <= 10:
        raise InvalidArgument("priority", "must be in [-10, 10]")
    if len(request.model) > 256:
        raise InvalidArgument("model", "too long")
    tools = _tools(request)
    tool_choice = _tool_choice(request, tools)
    json_schema = _json_schema(request)
    if json_schema is not None and tool_choice not in ("auto", "none"):
        raise InvalidArgument("tool_choice", "cannot force a call together with response_format")
    return ChatSpec(
        messages=messages,
        model=request.model,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=tuple(request.stop),
        json_schema=json_schema,
        data_class=DataClass(request.data_class),
        route=RoutePreference(request.route),
        priority=request.priority,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=not request.HasField("parallel_tool_calls")
        or request.parallel_tool_calls,
    )


def chunk_to_proto(chunk: ChatChunk, response_id: str) -> pb.ChatResponse:
    response = pb.ChatResponse(id=response_id, delta=chunk.delta)
    for call in chunk.tool_calls:
        response.tool_calls.add(id=call.id, name=call.name, arguments=call.arguments)
    if chunk.finish_reason is not None:
        response.finish_reason = _FINISH.get(chunk.finish_reason, pb.FINISH_REASON_STOP)
    if chunk.usage is not None:
        u = chunk.usage
        response.usage.CopyFrom(
            pb.Usage(
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                total_tokens=u.total_tokens,
            )
        )
    if chunk.provenance is not None:
        p = chunk.provenance
        response.provenance.CopyFrom(
            pb.Provenance(
                destination=_DESTINATION.get(p.destination, pb.DESTINATION_UNSPECIFIED),
                model=p.model,
                model_version=p.model_version,
                execution_provider=p.execution_provider,
                cloud_provider=p.cloud_provider,
                decision_reason=p.decision_reason,
            )
        )
    if chunk.timing is not None:
        t = chunk.timing
        response.timing.CopyFrom(
            pb.Timing(
                queue_ms=t.queue_ms,
                time_to_first_token_ms=t.time_to_first_token_ms,
                total_ms=t.total_ms,
            )
        )
    return response
