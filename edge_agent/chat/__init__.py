"""The chat path's vocabulary: requests, chunks, usage, provenance and messages.

One set of types for every layer: the gRPC and HTTP front ends translate to and from them,
the local and cloud legs produce them, and the client SDK reads them. This package's
``__init__`` stays free of the daemon's dependencies so that ``edge_agent.client`` imports
with grpcio and protobuf alone; the machinery that runs a chat (the local leg, the cloud leg,
the routing glue) is in :mod:`edge_agent.chat.service`.
"""

from edge_agent._messages import Message, ToolCall, ToolSpec
from edge_agent.chat._types import (
    CallContext,
    ChatChunk,
    ChatSpec,
    DataClass,
    Provenance,
    RoutePreference,
    Timing,
    Usage,
    estimate_prompt_tokens,
)

__all__ = [
    "CallContext",
    "ChatChunk",
    "ChatSpec",
    "DataClass",
    "Message",
    "Provenance",
    "RoutePreference",
    "Timing",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "estimate_prompt_tokens",
]
