"""The Python client SDK of edge-agent."""

from edge_agent.chat import ChatChunk, DataClass, Provenance, RoutePreference, Timing, Usage
from edge_agent.client._client import AsyncClient, Client
from edge_agent.client._convert import ChatOptions

__all__ = [
    "AsyncClient",
    "ChatChunk",
    "ChatOptions",
    "Client",
    "DataClass",
    "Provenance",
    "RoutePreference",
    "Timing",
    "Usage",
]
