"""The Python client SDK of edge-agent."""

from edge_agent._messages import Message, ToolCall, ToolSpec
from edge_agent.chat import ChatChunk, DataClass, Provenance, RoutePreference, Timing, Usage
from edge_agent.client._client import AsyncClient, Client
from edge_agent.client._convert import ChatOptions, MessageLike, tools_from_openai

__all__ = [
    "AsyncClient",
    "ChatChunk",
    "ChatOptions",
    "Client",
    "DataClass",
    "Message",
    "MessageLike",
    "Provenance",
    "RoutePreference",
    "Timing",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "tools_from_openai",
]
