"""The local inference path: admission, generation, and the answer's metadata.

It checks what only the running model can tell (context length), waits for admission
(memory, concurrency, pressure), runs the generation on the engine supervisor, and attaches
usage, timing and provenance to the final chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from edge_agent.chat._types import (
    CallContext,
    ChatChunk,
    ChatSpec,
    Provenance,
    Timing,
    Usage,
    estimate_prompt_tokens,
)
from edge_agent.engine import (
    Delta,
    EngineInfo,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ModelIdentity,
    Started,
    cache_partition,
)
from edge_agent.errors import EdgeAgentError, InvalidArgument
from edge_agent.metrics import Metrics
from edge_agent.policy import PressureView
from edge_agent.pressure import (
    AdmissionController,
    estimate_request_bytes,
    kv_bytes_per_token_from_genai_config,
    read_genai_config,
)
from edge_agent.toolcalls import ToolCallReader, compact_guidance, forced_call_schema, is_forced

__all__ = ["LocalChat", "LocalEngine"]

_NO_CONTEXT = CallContext()
# A rough per-request hold time for the queue-wait estimate; admission measures the real one.
_QUEUE_SECONDS_PER_WAITER = 2.0


class LocalEngine(Protocol):
    """What the local leg needs of the engine (the daemon's ``EngineSupervisor``)."""

    @property
    def model(self) -> ModelIdentity: ...

    @property
    def info(self) -> EngineInfo | None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]: ...

    def prefill_buffer_bytes(self, prompt_tokens: int) -> int: ...


def _guidance(spec: ChatSpec) -> str | None:
    """The local JSON-schema guidance: a forced call's shape, or the client's schema; both
    compact, so the model cannot pad with whitespace until max_tokens."""
    if spec.tools and is_forced(spec.tool_choice):
        return forced_call_schema(spec.tools, spec.tool_choice, spec.parallel_tool_calls)
    if spec.json_schema is not None:
        return compact_guidance(spec.json_schema)
    return None


class LocalChat:
    """Local chat on the supervised engine."""

    def __init__(
        self,
        engine: LocalEngine,
        *,
        admission: AdmissionController | None = None,
        metrics: Metrics | None = None,
        request_overhead_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._engine = engine
        self._admission = admission
        self._metrics = metrics
        self._overhead = request_overhead_bytes
        self._kv_per_token: tuple[str, int] | None = None

    @property
    def engine(self) -> LocalEngine:
        return self._engine

    @property
    def admission(self) -> AdmissionController | None:
        return self._admission

    def route_view(self, spec: ChatSpec) -> tuple[PressureView, float]:
        """What routing asks of the local side: the pressure level, whether admission could
        take ``spec`` now, and the expected queue wait in seconds."""
        if self._admission is None:
            return PressureView(level="ok", local_admissible=True), 0.0
        snapshot = self._admission.snapshot()
        level = snapshot.level.label if snapshot is not None else "ok"
        room = self._admission.room_bytes()
        cost = self.estimate_cost_bytes(spec)
        view = PressureView(
            level=level,  # type: ignore[arg-type]
            local_admissible=level != "critical" and (room is None or cost <= room),
        )
        return view, self._admission.stats.queued * _QUEUE_SECONDS_PER_WAITER

    def context_length(self) -> int:
        info = self._engine.info
        return info.context_length if info else 0

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token of the active model on its provider (cached per model)."""
        model, info = self._engine.model, self._engine.info
        key = f"{model.model_dir}:{info.execution_provider if info else ''}"
        if self._kv_per_token is None or self._kv_per_token[0] != key:
            # CPU keeps the KV cache in fp32 for int4 models; accelerators in fp16.
            element = 4 if info is None or info.execution_provider == "cpu" else 2
            try:
                config = read_genai_config(model.model_dir)
                per_token = kv_bytes_per_token_from_genai_config(config, element)
            except (OSError, ValueError, KeyError, TypeError):
                per_token = model.kv_bytes_per_token
            self._kv_per_token = (key, per_token)
        return self._kv_per_token[1]

    def estimate_cost_bytes(self, spec: ChatSpec) -> int:
        context = self.context_length()
        prompt = min(estimate_prompt_tokens(spec), context)
        max_tokens = spec.max_tokens if spec.max_tokens is not None else max(context - prompt, 0)
        # The runtime allocates the KV buffer for the whole context up front (shared buffer);
        # reading the prompt adds its transient logits.
        return estimate_request_bytes(
            self.kv_bytes_per_token(),
            prompt,
            max_tokens,
            self._overhead + self._engine.prefill_buffer_bytes(prompt),
            preallocated_tokens=context or None,
        )

    def shrink_hint(self) -> str:
        """What makes a too-large local request fit: the engine preallocates the whole context
        per request, so max_tokens changes nothing; a bundle with a smaller context does."""
        return (
            f"every local request reserves the model's whole context ({self.context_length()} "
            "tokens) whatever max_tokens says: the operator can serve a bundle built with a "
            "smaller context (search.max_length in genai_config.json)"
        )

    def _to_generation(
        self, spec: ChatSpec, continue_from: str = "", call: CallContext = _NO_CONTEXT
    ) -> GenerationRequest:
        context = self.context_length()
        if context and spec.max_tokens is not None and spec.max_tokens >= context:
            raise InvalidArgument(
                "max_tokens", f"must be below the model's context of {context} tokens"
            )
        return GenerationRequest(
            messages=spec.messages,
            max_tokens=spec.max_tokens,
            min_tokens=spec.min_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k,
            seed=spec.seed,
            stop=spec.stop,
            json_schema=_guidance(spec),
            assistant_prefix=continue_from,
            tools=spec.tools,
            tool_choice=spec.tool_choice,
            cache_partition=cache_partition(call.client_id, spec.data_class.name),
        )

    async def chat(
        self,
        spec: ChatSpec,
        call: CallContext = _NO_CONTEXT,
        *,
        reason: str = "local.default",
        continue_from: str = "",
    ) -> AsyncGenerator[ChatChunk, None]:
        """Stream the local answer; closing the iterator cancels the generation.

        ``continue_from``: text already sent to the client; the answer continues after it.
        """
        request = self._to_generation(spec, continue_from, call)
        t0 = time.perf_counter()
        outcome, usage, t_first = "error", None, None
        # Without an admission controller (tools, tests) the request runs at once.
        gate: contextlib.AbstractAsyncContextManager[object] = (
            self._admission.admit(
                cost_bytes=self.estimate_cost_bytes(spec),
                priority=spec.priority,
                deadline=call.deadline,
                shrink_hint=self.shrink_hint(),
            )
            if self._admission is not None
            else contextlib.nullcontext()
        )
        try:
            async with gate:
                t_admitted = time.perf_counter()
                info = self._engine.info
                reader = (
                    ToolCallReader(
                        spec.tools,
                        spec.tool_choice,
                        spec.parallel_tool_calls,
                        control_token=info is not None and info.prompt_format == "mistral-v7",
                    )
                    if spec.tools and spec.tool_choice != "none" and not continue_from
                    else None
                )
                chunks = self._generate(request, t0, t_admitted, reason, reader)
                async for chunk in chunks:
                    yield chunk
                    usage, t_first = self._observe(chunk, usage, t_first)
            outcome = "ok"
        except EdgeAgentError as exc:
            outcome = exc.code.name.lower()
            raise
        except (GeneratorExit, asyncio.CancelledError):
            # Closed by its consumer, or its task cancelled (client gone, deadline).
            outcome = "cancelled"
            raise
        finally:
            self._record(outcome, usage, t0, t_first)

    @staticmethod
    def _observe(
        chunk: ChatChunk, usage: Usage | None, t_first: float | None
    ) -> tuple[Usage | None, float | None]:
        if t_first is None and chunk.delta:
            t_first = time.perf_counter()
        return (chunk.usage or usage), t_first

    def _record(self, outcome: str, usage: Usage | None, t0: float, t_first: float | None) -> None:
        if self._metrics is None:
            return
        end = time.perf_counter()
        per_token = None
        if usage is not None and usage.completion_tokens > 1 and t_first is not None:
            per_token = (end - t_first) / (usage.completion_tokens - 1)
        self._metrics.request_finished(
            outcome,
            "local",
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            ttft_s=(t_first - t0) if t_first is not None else None,
            per_token_s=per_token,
            duration_s=end - t0,
        )

    async def _generate(
        self,
        request: GenerationRequest,
        t0: float,
        t_admitted: float,
        reason: str,
        reader: ToolCallReader | None,
    ) -> AsyncIterator[ChatChunk]:
        model = self._engine.model
        info = self._engine.info
        t_first = None
        async for event in self._engine.generate(request):
            if isinstance(event, Delta):
                if t_first is None:
                    t_first = time.perf_counter()
                if reader is not None:
                    text = reader.feed(event.text, after_control_token=event.tool_calls)
                else:
                    text = event.text
                if text:
                    yield ChatChunk(delta=text)
            elif isinstance(event, Started):
                continue
            elif isinstance(event, Finished):
                end = time.perf_counter()
                first = t_first if t_first is not None else end
                tail, calls = reader.finish() if reader is not None else ("", ())
                yield ChatChunk(
                    delta=tail,
                    finish_reason="tool_calls" if calls else event.finish_reason,
                    tool_calls=calls,
                    usage=Usage(event.prompt_tokens, event.completion_tokens),
                    provenance=Provenance(
                        destination="local",
                        model=model.name,
                        model_version=model.version,
                        execution_provider=info.execution_provider if info else "",
                        decision_reason=reason,
                    ),
                    timing=Timing(
                        queue_ms=(t_admitted - t0) * 1000,
                        time_to_first_token_ms=(first - t0) * 1000,
                        total_ms=(end - t0) * 1000,
                    ),
                )
