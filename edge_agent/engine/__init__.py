"""Local inference: a supervised worker process running onnxruntime-genai."""

from edge_agent.engine._supervisor import EngineSupervisor, identity_from_dir
from edge_agent.engine._types import (
    Delta,
    EngineInfo,
    EngineStatusView,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Message,
    ModelIdentity,
    Started,
    ToolCall,
    ToolSpec,
    cache_partition,
)

__all__ = [
    "Delta",
    "EngineInfo",
    "EngineStatusView",
    "EngineSupervisor",
    "Finished",
    "GenerationEvent",
    "GenerationRequest",
    "Message",
    "ModelIdentity",
    "Started",
    "ToolCall",
    "ToolSpec",
    "cache_partition",
    "identity_from_dir",
]
