"""Domain types of a chat exchange, independent of gRPC."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edge_agent._messages import Message, ToolCall, ToolSpec

__all__ = [
    "CallContext",
    "ChatChunk",
    "ChatSpec",
    "DataClass",
    "Provenance",
    "RoutePreference",
    "Timing",
    "Usage",
]


class DataClass(enum.IntEnum):
    """How sensitive a request's data is; decides the furthest place it may go."""

    UNSPECIFIED = 0
    PUBLIC = 1
    INTERNAL = 2
    CONFIDENTIAL = 3
    RESTRICTED = 4


class RoutePreference(enum.IntEnum):
    AUTO = 0
    LOCAL_ONLY = 1
    LARGE_MODEL = 2


@dataclass(frozen=True, slots=True)
class ChatSpec:
    """A chat request whose fields passed shape validation (see rpc.convert)."""

    messages: tuple[Message, ...]
    model: str = ""
    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: str | None = None
    data_class: DataClass = DataClass.UNSPECIFIED
    route: RoutePreference = RoutePreference.AUTO
    priority: int = 0
    tools: tuple[ToolSpec, ...] = ()
    # "auto", "none", "required", or the name of the tool the model must call.
    tool_choice: str = "auto"
    # False: at most one call per answer.
    parallel_tool_calls: bool = True


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Provenance:
    destination: str  # "local" or "cloud"
    model: str
    model_version: str = ""
    execution_provider: str = ""
    cloud_provider: str = ""
    decision_reason: str = ""


@dataclass(frozen=True, slots=True)
class Timing:
    queue_ms: float
    time_to_first_token_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One streamed piece of an answer; the last one carries the finish fields."""

    delta: str = ""
    finish_reason: str | None = None  # "stop", "length" or "tool_calls" on the final chunk
    # Complete calls (never split across chunks); set on the chunk before or on the final one.
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None
    provenance: Provenance | None = None
    timing: Timing | None = None


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who asked, and until when the answer is useful."""

    client_id: str = "anonymous"
    request_id: str = ""
    deadline: float | None = None  # a time.monotonic() instant
