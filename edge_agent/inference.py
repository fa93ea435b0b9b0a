"""The inference manager: turns a validated chat request into a stream of answer chunks.

It checks what only the running model can tell (context length), runs the generation on the
engine supervisor, and attaches usage, timing and provenance to the final chunk.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from edge_agent.chat import ChatChunk, ChatSpec, Provenance, Timing, Usage
from edge_agent.engine import (
    Delta,
    EngineSupervisor,
    Finished,
    GenerationRequest,
    Started,
)
from edge_agent.errors import InvalidArgument

__all__ = ["InferenceService"]


class InferenceService:
    """Local chat on the supervised engine."""

    def __init__(self, engine: EngineSupervisor) -> None:
        self._engine = engine

    @property
    def engine(self) -> EngineSupervisor:
        return self._engine

    def _to_generation(self, spec: ChatSpec) -> GenerationRequest:
        info = self._engine.info
        if (
            info is not None
            and spec.max_tokens is not None
            and spec.max_tokens >= info.context_length
        ):
            raise InvalidArgument(
                "max_tokens", f"must be below the model's context of {info.context_length} tokens"
            )
        return GenerationRequest(
            messages=spec.messages,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k,
            seed=spec.seed,
            stop=spec.stop,
            json_schema=spec.json_schema,
        )

    async def chat(
        self, spec: ChatSpec, *, reason: str = "local.default"
    ) -> AsyncIterator[ChatChunk]:
        """Stream the local answer; closing the iterator cancels the generation."""
        request = self._to_generation(spec)
        model = self._engine.model
        info = self._engine.info
        t0 = time.perf_counter()
        t_start = t_first = None
        async for event in self._engine.generate(request):
            if isinstance(event, Delta):
                if t_first is None:
                    t_first = time.perf_counter()
                yield ChatChunk(delta=event.text)
            elif isinstance(event, Started):
                t_start = time.perf_counter()
            elif isinstance(event, Finished):
                end = time.perf_counter()
                first = t_first if t_first is not None else end
                yield ChatChunk(
                    finish_reason=event.finish_reason,
                    usage=Usage(event.prompt_tokens, event.completion_tokens),
                    provenance=Provenance(
                        destination="local",
                        model=model.name,
                        model_version=model.version,
                        execution_provider=info.execution_provider if info else "",
                        decision_reason=reason,
                    ),
                    timing=Timing(
                        queue_ms=((t_start or t0) - t0) * 1000,
                        time_to_first_token_ms=(first - t0) * 1000,
                        total_ms=(end - t0) * 1000,
                    ),
                )
