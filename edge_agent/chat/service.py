"""The daemon's chat path: the routing glue and its two legs (see docs/ARCHITECTURE.md).

Kept out of :mod:`edge_agent.chat` itself, whose types the client SDK imports without the
engine, the cloud client or the policy.
"""

from edge_agent.chat._cloud import CloudLeg, CloudRoute
from edge_agent.chat._local import LocalChat, LocalEngine
from edge_agent.chat._record import AuditRecorder, LegRecord, Outcome
from edge_agent.chat._service import ChatService, PolicySource
from edge_agent.chat._types import estimate_prompt_tokens

__all__ = [
    "AuditRecorder",
    "ChatService",
    "CloudLeg",
    "CloudRoute",
    "LegRecord",
    "LocalChat",
    "LocalEngine",
    "Outcome",
    "PolicySource",
    "estimate_prompt_tokens",
]
