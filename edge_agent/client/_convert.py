"""Client-side conversion between protobuf and the SDK's types."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent.chat import ChatChunk, DataClass, Provenance, RoutePreference, Timing, Usage

__all__ = ["ChatOptions", "build_request", "chunk_from_proto"]

_FINISH = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}
_DEST = {pb.DESTINATION_LOCAL: "local", pb.DESTINATION_CLOUD: "cloud"}


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


def build_request(messages: Sequence[tuple[str, str]], options: ChatOptions) -> pb.ChatRequest:
    request = pb.ChatRequest(
        messages=[pb.ChatMessage(role=r, content=c) for r, c in messages],
        model=options.model,
        stop=list(options.stop),
        data_class=int(options.data_class),  # type: ignore[arg-type]
        route=int(options.route),  # type: ignore[arg-type]
        priority=options.priority,
    )
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
    if response.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return ChatChunk(delta=response.delta)
    p, t, u = response.provenance, response.timing, response.usage
    return ChatChunk(
        delta=response.delta,
        finish_reason=_FINISH.get(response.finish_reason, "stop"),
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
