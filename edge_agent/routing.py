"""Where a chat runs: the decision, the local or cloud stream, failover, budget and audit.

Every request goes through :func:`edge_agent.router.decide` (a pure function) with the live
pressure, connectivity, effective policy and budget. Local is the default; the cloud is used
only when the local path cannot serve well and everything permits. A cloud failure before
the first token falls back to local; a cut mid-stream continues locally from the text so far
or ends with a clear status (``cloud.failover``). Every decision lands in the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from edge_agent.audit import AuditEntry, AuditLog
from edge_agent.chat import (
    CallContext,
    ChatChunk,
    ChatSpec,
    DataClass,
    Provenance,
    RoutePreference,
    Timing,
    Usage,
)
from edge_agent.cloud import (
    ChatMessage,
    CloudChatRequest,
    CloudConfig,
    ConnectivityMonitor,
    FailoverEvent,
    RouterClient,
    StreamChunk,
    cost_usd,
    failover_stream,
    parse_model_ref,
)
from edge_agent.cloud import Usage as CloudUsage
from edge_agent.credentials import CredentialStore
from edge_agent.errors import ResourceExhausted
from edge_agent.inference import InferenceService, estimate_prompt_tokens
from edge_agent.metrics import Metrics
from edge_agent.pressure import AdmissionController, PressureMonitor
from edge_agent.router import (
    BudgetLedger,
    BudgetView,
    Decision,
    EffectivePolicy,
    LocalPolicyOverrides,
    ModelPrice,
    PolicyStore,
    PressureView,
    Reservation,
    RouteRequest,
    decide,
    merge_policy,
)

__all__ = ["ChatRouter"]

_log = logging.getLogger(__name__)

_CLASS_NAMES = {
    DataClass.UNSPECIFIED: None,
    DataClass.PUBLIC: "public",
    DataClass.INTERNAL: "internal",
    DataClass.CONFIDENTIAL: "confidential",
    DataClass.RESTRICTED: "restricted",
}
_ROUTES = {
    RoutePreference.AUTO: "auto",
    RoutePreference.LOCAL_ONLY: "local_only",
    RoutePreference.LARGE_MODEL: "large_model",
}
# What a cloud answer may cost when the client set no max_tokens (reservation worst case).
_CLOUD_DEFAULT_MAX_TOKENS = 1024
# A rough per-request hold time for the queue-wait estimate; admission measures the real one.
_QUEUE_SECONDS_PER_WAITER = 2.0


@dataclass
class _Outcome:
    destination: str = "local"
    usage: Usage | None = None
    model: str = ""
    provider: str = ""
    cost: float = 0.0


class ChatRouter:
    """Decides and runs each chat; the API layer calls :meth:`chat`."""

    def __init__(
        self,
        *,
        local: InferenceService,
        admission: AdmissionController,
        pressure: PressureMonitor,
        policies: PolicyStore,
        overrides: LocalPolicyOverrides,
        credentials: CredentialStore,
        ledger: BudgetLedger,
        audit: AuditLog,
        metrics: Metrics,
        cloud: RouterClient | None,
        connectivity: ConnectivityMonitor | None,
        cloud_config: CloudConfig,
        include_prompts: bool = False,
    ) -> None:
        self._local = local
        self._admission = admission
        self._pressure = pressure
        self._policies = policies
        self._overrides = overrides
        self._credentials = credentials
        self._ledger = ledger
        self._audit = audit
        self._metrics = metrics
        self._cloud = cloud
        self._connectivity = connectivity
        self._cloud_config = cloud_config
        self._include_prompts = include_prompts

    def set_overrides(self, overrides: LocalPolicyOverrides) -> None:
        """The local tightening after a config reload (it can only make policy stricter)."""
        self._overrides = overrides

    def effective_policy(self) -> EffectivePolicy:
        doc = self._policies.current()
        info = self._credentials.info()
        return merge_policy(
            doc.policy if doc is not None else None,
            self._overrides,
            info.scope if info is not None else None,
        )

    def connectivity_state(self) -> str:
        if self._connectivity is None or self._cloud is None:
            return "disabled"
        return str(self._connectivity.snapshot().state.value)

    def _live_prices(self, policy: EffectivePolicy) -> dict[str, ModelPrice]:
        """The router's current prices of the policy's models (reservations take the higher)."""
        catalog = self._connectivity.catalog if self._connectivity is not None else None
        if catalog is None:
            return {}
        prices = {}
        for model in policy.models:
            with contextlib.suppress(Exception):
                p = catalog.pricing_for(parse_model_ref(model))
                if p is not None:
                    prices[model] = ModelPrice(float(p.input_per_mtok), float(p.output_per_mtok))
        return prices

    def _decide(self, spec: ChatSpec, call: CallContext, now: datetime) -> Decision:
        policy = self.effective_policy()
        context = self._local.context_length()
        # A typical BPE token is ~4 characters: the routing estimate; admission errs higher.
        prompt = sum(len(m.content) for m in spec.messages) // 4 + 8 * len(spec.messages)
        default_max = max(context - prompt, 1) if context else _CLOUD_DEFAULT_MAX_TOKENS
        snapshot = self._pressure.snapshot
        level = snapshot.level.label if snapshot is not None else "ok"
        room = self._admission.room_bytes()
        cost = self._local.estimate_cost_bytes(spec)
        stats = self._admission.stats
        info = self._credentials.info()
        request = RouteRequest(
            client_id=call.client_id,
            data_class=_CLASS_NAMES[spec.data_class],
            route=_ROUTES[spec.route],  # type: ignore[arg-type]
            prompt_tokens=prompt,
            max_tokens=spec.max_tokens or default_max,
            deadline_s=(call.deadline - time.monotonic()) if call.deadline else None,
            local_context_length=context,
            local_queue_wait_s=stats.queued * _QUEUE_SECONDS_PER_WAITER,
            model=spec.model or None,
        )

        def budget() -> BudgetView:
            # Read only when the cloud is still a candidate (a SQLite read per request).
            return self._ledger.view(
                now, call.client_id, info.envelope_id if info else "", self._live_prices(policy)
            )

        pressure = PressureView(
            level=level,  # type: ignore[arg-type]
            local_admissible=level != "critical" and (room is None or cost <= room),
        )
        return decide(request, pressure, self.connectivity_state(), policy, budget, now)

    async def chat(self, spec: ChatSpec, call: CallContext) -> AsyncIterator[ChatChunk]:
        now = datetime.now(UTC)
        decision = self._decide(spec, call, now)
        outcome = _Outcome(destination=decision.destination)
        try:
            if decision.destination == "reject" and decision.need == "context_exceeded":
                # The estimate said "too long" and the cloud may not take it: the local path
                # measures exactly and answers with the precise field error (or serves it).
                outcome.destination = "reject"
                async for chunk in self._local_chat(spec, call, decision.reason, outcome):
                    yield chunk
            elif decision.destination == "reject":
                self._reject(decision)
            elif decision.destination == "cloud":
                self._metrics.escalated(decision.need or "requested")
                async for chunk in self._cloud_chat(spec, call, decision, now, outcome):
                    yield chunk
            else:
                async for chunk in self._local_chat(spec, call, decision.reason, outcome):
                    yield chunk
        finally:
            await self._record(spec, call, decision, outcome)

    def _reject(self, decision: Decision) -> None:
        raise ResourceExhausted(
            f"the box cannot take this request now and may not escalate ({decision.blocker})",
            retry_after_ms=self._admission.stats.queued * 1000 + 1000,
        )

    async def _local_chat(
        self,
        spec: ChatSpec,
        call: CallContext,
        reason: str,
        outcome: _Outcome,
        continue_from: str = "",
    ) -> AsyncIterator[ChatChunk]:
        model = self._local.engine.model
        outcome.destination = "local"
        outcome.model = f"{model.name}@{model.version}"
        stream = self._local.chat(spec, call, reason=reason, continue_from=continue_from)
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                if chunk.usage is not None:
                    outcome.usage = chunk.usage
                if chunk.provenance is not None:
                    outcome.provider = chunk.provenance.execution_provider
                yield chunk

    async def _cloud_chat(
        self,
        spec: ChatSpec,
        call: CallContext,
        decision: Decision,
        now: datetime,
        outcome: _Outcome,
    ) -> AsyncIterator[ChatChunk]:
        assert self._cloud is not None
        policy = self.effective_policy()
        info = self._credentials.info()
        try:
            reservation = await asyncio.to_thread(
                self._ledger.reserve,
                policy,
                client_id=call.client_id,
                tokens=decision.estimated_tokens,
                usd=decision.estimated_usd,
                now=now,
                credential_id=info.envelope_id if info else "",
            )
        except ResourceExhausted:
            # Another request took the last of the budget since the decision: stay local.
            fallback = self._local_chat(spec, call, "local.budget_reserved_by_others", outcome)
            async for local_chunk in fallback:
                yield local_chunk
            return
        model = decision.cloud_model or ""
        ref = f"{model}:{decision.cloud_provider}" if decision.cloud_provider else model
        request = CloudChatRequest(
            messages=tuple(
                ChatMessage(m.role, m.content, m.tool_calls, m.tool_call_id) for m in spec.messages
            ),
            model=ref,
            max_tokens=spec.max_tokens or _CLOUD_DEFAULT_MAX_TOKENS,
            temperature=spec.temperature,
            top_p=spec.top_p,
            stop=spec.stop,
            seed=spec.seed,
            json_schema=spec.json_schema,
            tools=spec.tools,
            tool_choice=spec.tool_choice,
            parallel_tool_calls=spec.parallel_tool_calls,
        )
        remaining = (call.deadline - time.monotonic()) if call.deadline else None
        failovers: list[FailoverEvent] = []
        local_chunks: list[ChatChunk] = []

        async def local_stream(text_so_far: str) -> AsyncIterator[StreamChunk]:
            reason = (
                "local.cloud_failover" if text_so_far else "local.cloud_failed_before_first_token"
            )
            async for c in self._local_chat(spec, call, reason, outcome, continue_from=text_so_far):
                local_chunks.append(c)
                yield StreamChunk(delta=c.delta, source="local", finish_reason=c.finish_reason)

        t0 = time.perf_counter()
        t_first: float | None = None
        cloud_text: list[str] = []
        cloud_usage: CloudUsage | None = None
        served_by = ("", "")
        settled = False
        stream = failover_stream(
            self._cloud.stream_chat(request, timeout_s=remaining),
            local_stream,
            mode=self._cloud_config.failover,
            first_token_timeout_s=self._cloud_config.first_token_timeout_s,
            inter_chunk_timeout_s=self._cloud_config.event_timeout_s,
            on_failover=failovers.append,
            observer=self._connectivity,
        )
        try:
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    if chunk.source == "local":
                        # The local final chunk already carries usage and provenance.
                        yield local_chunks[-1] if local_chunks else ChatChunk(delta=chunk.delta)
                        continue
                    outcome.destination = "cloud"
                    if chunk.delta:
                        t_first = t_first or time.perf_counter()
                        cloud_text.append(chunk.delta)
                    if chunk.model or chunk.provider:
                        served_by = (chunk.model or served_by[0], chunk.provider or served_by[1])
                    if chunk.usage is not None:
                        cloud_usage = chunk.usage
                    if chunk.finish_reason is None:
                        yield ChatChunk(delta=chunk.delta)
                        continue
                    end = time.perf_counter()
                    answer = self._cloud_usage(cloud_usage, spec, cloud_text)
                    outcome.usage, outcome.model = answer, served_by[0] or model
                    outcome.provider = served_by[1]
                    outcome.cost = await self._settle(
                        reservation, answer, outcome.model, served_by[1]
                    )
                    settled = True
                    finish = "length" if chunk.finish_reason == "length" else "stop"
                    yield ChatChunk(
                        delta=chunk.delta,
                        finish_reason="tool_calls" if chunk.tool_calls else finish,
                        tool_calls=chunk.tool_calls,
                        usage=answer,
                        provenance=Provenance(
                            destination="cloud",
                            model=outcome.model,
                            cloud_provider=served_by[1],
                            decision_reason=decision.reason,
                        ),
                        timing=Timing(0.0, ((t_first or end) - t0) * 1000, (end - t0) * 1000),
                    )
        finally:
            if not settled:
                if cloud_text:
                    partial = self._cloud_usage(cloud_usage, spec, cloud_text)
                    outcome.cost = await self._settle(reservation, partial, model, served_by[1])
                else:
                    await asyncio.to_thread(self._ledger.release, reservation)
            for event in failovers:
                _log.warning(
                    "cloud %s at %s (%s): %s",
                    event.kind,
                    event.stage,
                    event.action,
                    decision.reason,
                )

    @staticmethod
    def _cloud_usage(usage: CloudUsage | None, spec: ChatSpec, text: list[str]) -> Usage:
        if usage is not None:
            return Usage(usage.prompt_tokens, usage.completion_tokens)
        # No usage from the router (a cut stream): estimate high so budgets stay safe.
        return Usage(estimate_prompt_tokens(spec), sum(len(t) for t in text) // 2 + 1)

    async def _settle(
        self, reservation: Reservation, usage: Usage, model: str, provider: str
    ) -> float:
        price = None
        catalog = self._connectivity.catalog if self._connectivity is not None else None
        if catalog is not None:
            with contextlib.suppress(Exception):
                price = catalog.pricing_for(parse_model_ref(model), provider or None)
        usd = Decimal(0)
        if price is not None:
            usd = cost_usd(CloudUsage(usage.prompt_tokens, usage.completion_tokens), price)
        else:
            fleet = self.effective_policy().models.get(model.split(":")[0])
            if fleet is not None:
                usd = Decimal(str(fleet.cost(usage.prompt_tokens, usage.completion_tokens)))
        # An fsynced commit: off the event loop.
        await asyncio.to_thread(
            self._ledger.settle, reservation, tokens=usage.total_tokens, usd=float(usd)
        )
        return float(usd)

    async def _record(
        self, spec: ChatSpec, call: CallContext, decision: Decision, outcome: _Outcome
    ) -> None:
        usage = outcome.usage
        prompt = None
        if self._include_prompts:
            prompt = "\n".join(f"{m.role}: {m.content}" for m in spec.messages)
        entry = AuditEntry(
            request_id=call.request_id,
            client_id=call.client_id,
            data_class=decision.data_class,
            destination=outcome.destination if decision.destination != "reject" else "reject",
            reason=decision.reason,
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            cost_usd=outcome.cost,
            model=outcome.model,
            provider=outcome.provider,
            prompt=prompt,
        )
        try:
            await self._audit.append_async(entry)
        except Exception:
            # The answer was already given; a failing disk must be loud, not silent.
            _log.exception("could not append to the audit log")
        if outcome.destination == "cloud" and usage is not None:
            self._metrics.request_finished(
                "ok", "cloud", tokens_in=usage.prompt_tokens, tokens_out=usage.completion_tokens
            )
