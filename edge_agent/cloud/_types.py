"""Value types of the router client: what it sends, what it streams back, what it did.

Messages and usage are the chat path's own (:mod:`edge_agent.chat`). ``StreamChunk`` is what
the router client streams: the chat path's cloud leg turns it into
:class:`edge_agent.chat.ChatChunk` in one place. Only the last chunk of a stream has
``finish_reason`` (and ``usage`` when known); earlier ones carry text ``delta``s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edge_agent.chat import Message, ToolCall, ToolSpec, Usage
from edge_agent.errors import InvalidArgument

__all__ = ["CloudAttempt", "CloudChatRequest", "Source", "StreamChunk"]

Source = Literal["local", "cloud"]

_ROLES = frozenset({"system", "user", "assistant", "tool"})
# Failure kinds that mean the request was refused before anything was generated.
_REFUSALS = frozenset(
    {"auth", "forbidden", "account_exhausted", "rate_limited", "model_unavailable", "not_found"}
)


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One piece of a streamed answer and where it was produced.

    ``model`` and ``provider`` are provenance: for the cloud, the model the router named and
    the provider it reported in ``x-inference-provider``; for local, the bundle's model and
    version and the execution provider.
    """

    delta: str
    source: Source
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    provider: str | None = None
    # Complete calls (the cloud's fragments joined), on the final chunk.
    tool_calls: tuple[ToolCall, ...] = ()

    def __post_init__(self) -> None:
        if self.source not in ("local", "cloud"):
            raise ValueError(f"unknown chunk source {self.source!r}")


@dataclass(frozen=True, slots=True)
class CloudChatRequest:
    """What the router client sends. ``model`` None means the configured default.

    ``json_schema`` is a JSON Schema document as text; it becomes an OpenAI
    ``response_format`` of type ``json_schema``.
    """

    messages: tuple[Message, ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = field(default=())
    seed: int | None = None
    json_schema: str | None = None
    # Passed to the provider as OpenAI's tools / tool_choice / parallel_tool_calls.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "auto"  # "auto", "none", "required" or a tool name
    parallel_tool_calls: bool = True

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidArgument("messages", "must not be empty")
        if any(m.role not in _ROLES for m in self.messages):
            raise InvalidArgument("messages.role", f"must be one of {', '.join(sorted(_ROLES))}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidArgument("max_tokens", "must be at least 1")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise InvalidArgument("temperature", "must be between 0 and 2")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise InvalidArgument("top_p", "must be in (0, 1]")
        if len(self.stop) > 4:
            raise InvalidArgument("stop", "at most 4 stop strings")


@dataclass(slots=True)
class CloudAttempt:
    """What one chat request did on the wire; ``stream_chat`` fills it in as it goes.

    ``sent``: the request may have reached the router (bytes may have been written; only a
    failure to connect proves they were not). ``status``: the HTTP status the router
    answered, None when it never answered. ``accepted``: a 200 event stream began, so a
    provider took the request and may bill it even if we stop reading.
    """

    sent: bool = False
    status: int | None = None
    accepted: bool = False
    provider: str | None = None
    error_kind: str | None = None

    @property
    def may_be_billed(self) -> bool:
        """Whether a provider may charge for it: sent, and not refused (an error status, or
        a refusal inside the stream: no balance, rate limit, credential, model)."""
        if self.error_kind in _REFUSALS:
            return False
        return self.sent and (self.status is None or self.accepted)
