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
    "estimate_prompt_tokens",
]

# A BPE token is about 4 characters of English, rarely fewer than 2. Routing takes the
# typical figure; memory admission errs high (the fewest characters per token). The worker
# counts the real number.
TYPICAL_CHARS_PER_TOKEN = 4
FEWEST_CHARS_PER_TOKEN = 2
_TEMPLATE_TOKENS = 8  # per message or tool: role markers and separators


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
    """Token counts of one answer, as its producer (the engine, a cloud provider) reported."""

    prompt_tokens: int
    completion_tokens: int

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.completion_tokens < 0:
            raise ValueError("token counts must not be negative")

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


def estimate_prompt_tokens(spec: ChatSpec, chars_per_token: int = FEWEST_CHARS_PER_TOKEN) -> int:
    """The prompt's tokens before the worker has counted them: every text the prompt renders
    (messages, their tool calls, the tool definitions) over ``chars_per_token``."""
    chars = sum(
        len(m.content) + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
        for m in spec.messages
    )
    chars += sum(len(t.name) + len(t.description) + len(t.parameters_json) for t in spec.tools)
    return chars // chars_per_token + _TEMPLATE_TOKENS * (len(spec.messages) + len(spec.tools))
