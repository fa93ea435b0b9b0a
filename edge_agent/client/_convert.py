"""Client-side conversion between protobuf and the SDK's types."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent._messages import Message, ToolCall, ToolSpec
from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent.chat import ChatChunk, DataClass, Provenance, RoutePreference, Timing, Usage

__all__ = ["ChatOptions", "MessageLike", "build_request", "chunk_from_proto", "tools_from_openai"]

_FINISH = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}
_DEST = {pb.DESTINATION_LOCAL: "local", pb.DESTINATION_CLOUD: "cloud"}
_CHOICES = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}

# ("user", "text") for plain turns; a Message for tool turns and assistant calls.
MessageLike = tuple[str, str] | Message


@dataclass(frozen=True, slots=True)
class ChatOptions:
    max_tokens: int | None = None
    min_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    json_schema: str | None = None
    data_class: DataClass = DataClass.UNSPECIFIED
    route: RoutePreference = RoutePreference.AUTO
    priority: int = 0
    model: str = ""
    # Functions the model may call; the final chunk then may carry tool_calls.
    tools: Sequence[ToolSpec] = ()
    # "auto", "none", "required" (at least one call) or a tool's name (one call of it).
    tool_choice: str = "auto"
    # None: the server's default (several calls allowed); False: at most one.
    parallel_tool_calls: bool | None = None


def tools_from_openai(tools: Iterable[Mapping[str, Any]]) -> tuple[ToolSpec, ...]:
    """OpenAI's ``tools`` list (``{"type": "function", "function": {...}}``, or the bare
    function objects) as :class:`ToolSpec`; the server checks names and schemas."""
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ValueError(f"tools[{i}]: a function with a name is needed")
        parameters = function.get("parameters", {})
        out.append(
            ToolSpec(
                name=function["name"],
                description=str(function.get("description", "")),
                parameters_json=json.dumps(parameters, separators=(",", ":")),
            )
        )
    return tuple(out)


def _message(m: MessageLike) -> pb.ChatMessage:
    if not isinstance(m, Message):
        role, content = m
        return pb.ChatMessage(role=role, content=content)
    return pb.ChatMessage(
        role=m.role,
        content=m.content,
        tool_calls=[pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in m.tool_calls],
        tool_call_id=m.tool_call_id,
    )


def build_request(messages: Sequence[MessageLike], options: ChatOptions) -> pb.ChatRequest:
    request = pb.ChatRequest(
        messages=[_message(m) for m in messages],
        model=options.model,
        stop=list(options.stop),
        data_class=int(options.data_class),  # type: ignore[arg-type]
        route=int(options.route),  # type: ignore[arg-type]
        priority=options.priority,
        tools=[
            pb.Tool(name=t.name, description=t.description, parameters_json=t.parameters_json)
            for t in options.tools
        ],
    )
    if options.tool_choice in _CHOICES:
        request.tool_choice.mode = _CHOICES[options.tool_choice]
    else:
        request.tool_choice.mode = pb.TOOL_CHOICE_MODE_FUNCTION
        request.tool_choice.function_name = options.tool_choice
    if options.parallel_tool_calls is not None:
        request.parallel_tool_calls = options.parallel_tool_calls
    if options.max_tokens is not None:
        request.max_tokens = options.max_tokens
    if options.min_tokens is not None:
        request.min_tokens = options.min_tokens
    if options.temperature is not None:
        request.temperature = options.temperature
    if options.top_p is not None:
        request.top_p = options.top_p
    if options.top_k is not None:
        request.top_k = options.top_k
    if options.seed is not None:
        request.seed = options.seed
    if options.json_schema is not None:
        request.response_format.type = pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
        request.response_format.json_schema = options.json_schema
    return request


def chunk_from_proto(response: pb.ChatResponse) -> ChatChunk:
    calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in response.tool_calls)
    if response.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return ChatChunk(delta=response.delta, tool_calls=calls)
    p, t, u = response.provenance, response.timing, response.usage
    return ChatChunk(
        delta=response.delta,
        finish_reason=_FINISH.get(response.finish_reason, "stop"),
        tool_calls=calls,
        usage=Usage(u.prompt_tokens, u.completion_tokens),
        provenance=Provenance(
            destination=_DEST.get(p.destination, "unknown"),
            model=p.model,
            model_version=p.model_version,
            execution_provider=p.execution_provider,
            cloud_provider=p.cloud_provider,
            decision_reason=p.decision_reason,
        ),
        timing=Timing(t.queue_ms, t.time_to_first_token_ms, t.total_ms),
    )
