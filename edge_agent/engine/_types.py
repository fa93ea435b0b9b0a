"""Domain types of the local engine: what the daemon asks for and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent._messages import Message, ToolCall, ToolSpec

__all__ = [
    "Delta",
    "EngineInfo",
    "EngineStatusView",
    "Finished",
    "GenerationEvent",
    "GenerationRequest",
    "Message",
    "ModelIdentity",
    "Started",
    "ToolCall",
    "ToolSpec",
    "cache_partition",
    "messages_from_job",
    "tools_from_job",
]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated local generation job."""

    messages: tuple[Message, ...]
    max_tokens: int | None = None
    min_tokens: int = 0
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: str | None = None
    # Text the answer already has (a cloud stream cut mid-way): generation continues after it.
    assistant_prefix: str = ""
    tools: tuple[ToolSpec, ...] = ()
    # "auto", "none", "required", or a tool name the model must call.
    tool_choice: str = "auto"
    # Requests may reuse each other's KV cache only within one partition (engine/_prefix.py);
    # empty: this request neither reuses nor leaves anything to reuse.
    cache_partition: str = ""

    def to_job(self) -> dict[str, Any]:
        return {
            # Plain data only crosses the pipe (see _protocol); messages_from_job reads it back.
            "messages": [
                (
                    m.role,
                    m.content,
                    [(c.id, c.name, c.arguments) for c in m.tool_calls],
                    m.tool_call_id,
                )
                for m in self.messages
            ],
            "max_tokens": self.max_tokens,
            "min_tokens": self.min_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": list(self.stop),
            "json_schema": self.json_schema,
            "assistant_prefix": self.assistant_prefix,
            "tools": [(t.name, t.description, t.parameters_json) for t in self.tools],
            "tool_choice": self.tool_choice,
            "cache_partition": self.cache_partition,
        }


def cache_partition(client_id: str, data_class: str) -> str:
    """The prefix-reuse partition of a request: its authenticated client and data class, so
    no client's first-token time can tell it what another client (or another class of the
    same client's data) asked."""
    return f"{len(client_id)}:{client_id}/{data_class}"


def messages_from_job(job: dict[str, Any]) -> tuple[Message, ...]:
    """The worker's side of ``GenerationRequest.to_job``."""
    return tuple(
        Message(
            str(role),
            str(content),
            tuple(ToolCall(str(i), str(n), str(a)) for i, n, a in calls),
            str(call_id),
        )
        for role, content, calls, call_id in job["messages"]
    )


def tools_from_job(job: dict[str, Any]) -> tuple[ToolSpec, ...]:
    return tuple(ToolSpec(str(n), str(d), str(p)) for n, d, p in job.get("tools", ()))


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What provenance reports about a local model."""

    name: str
    version: str
    model_dir: Path
    architecture: str = "MistralForCausalLM"
    quantization: str = "int4"
    kv_bytes_per_token: int = 0
    memory_estimate_bytes: int = 0  # bundle.json's; 0 when the folder has none


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What a worker reported once its model loaded."""

    execution_provider: str
    context_length: int
    max_batch_size: int
    lanes: int
    vocab_size: int
    pid: int
    intra_op_threads: int = 0  # as the worker resolved it (0: not reported)
    prompt_format: str = ""  # "mistral-v7" or "chat-template" (engine/_prompt.py)

    @classmethod
    def from_wire(cls, info: dict[str, Any]) -> EngineInfo:
        return cls(
            execution_provider=str(info["provider"]),
            context_length=int(info["context_length"]),
            max_batch_size=int(info["max_batch_size"]),
            lanes=int(info["lanes"]),
            vocab_size=int(info.get("vocab_size", 0)),
            pid=int(info["pid"]),
            intra_op_threads=int(info.get("intra_op_threads", 0)),
            prompt_format=str(info.get("prompt_format", "")),
        )


@dataclass(frozen=True, slots=True)
class Started:
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Delta:
    text: str
    # True for text after the model's tool-call control token (Mistral's [TOOL_CALLS] id,
    # which decodes to nothing): the calls' JSON, never answer text. Text that merely reads
    # "[TOOL_CALLS]" stays answer text, so a conversation cannot forge a call through it.
    tool_calls: bool = False


@dataclass(frozen=True, slots=True)
class Finished:
    # "stop" or "length"
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


GenerationEvent = Started | Delta | Finished


@dataclass(frozen=True, slots=True)
class EngineStatusView:
    state: str  # "starting", "ready", "restarting", "stopped"
    execution_provider: str
    restarts: int
    active_requests: int
    queued_requests: int
    lanes: int
    max_batch_size: int
    context_length: int
    intra_op_threads: int = 0
    wedged_restarts: int = 0
    last_sign_of_life_age_s: float = 0.0
    worker_stats: dict[str, Any] = field(default_factory=dict)
