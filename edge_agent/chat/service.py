"""The daemon's chat path: the routing glue and its two legs (see docs/ARCHITECTURE.md).

Kept out of :mod:`edge_agent.chat` itself, whose types the client SDK imports without the
engine, the cloud client or the policy.
"""

from edge_agent.chat._local import LocalChat
from edge_agent.chat._service import ChatService
from edge_agent.chat._types import estimate_prompt_tokens

__all__ = ["ChatService", "LocalChat", "estimate_prompt_tokens"]
