"""The words of a chat: messages, tool calls and tools, shared by every layer.

Kept free of any dependency (the engine, the daemon, the wire format) so that
``edge_agent.client`` imports with grpcio and protobuf alone.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Message", "ToolCall", "ToolSpec"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the assistant made (OpenAI's tool_calls entry, type "function")."""

    id: str
    name: str
    arguments: str  # JSON object text, as OpenAI carries it


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call (OpenAI's tools entry, type "function")."""

    name: str
    description: str = ""
    parameters_json: str = "{}"  # JSON Schema object text


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn. role is system, user, assistant or tool.

    An assistant turn may carry tool_calls; a tool turn answers the call named by
    tool_call_id with its content.
    """

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
