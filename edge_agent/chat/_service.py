"""Where a chat runs: the decision, the local or cloud leg, failover, and the audit record.

Every request goes through :func:`edge_agent.policy.decide` (a pure function) with the live
pressure, connectivity, effective policy, budget and the router's catalog. Local is the
default; the cloud is used only when the local path cannot serve well and everything
permits. A client deadline is budgeted: the cloud may use only what the deadline leaves
after a local answer's measured cost (:class:`edge_agent.policy.LocalPace`), so a late or
silent cloud still ends in a local answer in time. A cloud failure before the first token
falls back to local; a cut mid-stream continues locally from the text so far or ends with a
clear status (``cloud.failover``).

Each request keeps one :class:`~edge_agent.chat._record.Outcome`: the client's provenance
and the audit record are both read from it, so they agree. Every inner stream is closed
explicitly, before the audit record is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from typing import NoReturn

from edge_agent.chat._cloud import CloudLeg, CloudRoute
from edge_agent.chat._local import LocalChat
from edge_agent.chat._record import AuditRecorder, LegRecord, Outcome
from edge_agent.chat._types import (
    TYPICAL_CHARS_PER_TOKEN,
    CallContext,
    ChatChunk,
    ChatSpec,
    DataClass,
    RoutePreference,
    estimate_prompt_tokens,
)
from edge_agent.cloud import FailoverEvent, failover_stream
from edge_agent.credentials import EnvelopeInfo
from edge_agent.errors import EdgeAgentError, ResourceExhausted
from edge_agent.policy import (
    LOCAL_CAN_ANSWER,
    BudgetView,
    Decision,
    EffectivePolicy,
    LocalPace,
    LocalPolicyOverrides,
    PolicyStore,
    RouteRequest,
    decide,
    merge_policy,
)

__all__ = ["ChatService", "PolicySource"]

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
# The routing estimate's max_tokens when the client set none and there is no local context.
_DEFAULT_MAX_TOKENS = 1024


class PolicySource:
    """The effective policy: the fleet's signed document, made only stricter by the local
    tightening and the installed credential's scope."""

    def __init__(
        self,
        policies: PolicyStore,
        overrides: LocalPolicyOverrides,
        credential: Callable[[], EnvelopeInfo | None],
    ) -> None:
        self._policies = policies
        self._overrides = overrides
        self._credential = credential

    def set_overrides(self, overrides: LocalPolicyOverrides) -> None:
        """The local tightening after a config reload (it can only make policy stricter)."""
        self._overrides = overrides

    def effective(self) -> EffectivePolicy:
        doc = self._policies.current()
        info = self._credential()
        return merge_policy(
            doc.policy if doc is not None else None,
            self._overrides,
            info.scope if info is not None else None,
        )

    def credential_id(self) -> str:
        info = self._credential()
        return info.envelope_id if info is not None else ""


class ChatService:
    """Decides and runs each chat; both front ends call :meth:`chat`.

    Four parts: the local leg (engine, admission), the policy, the cloud route (router
    client, connectivity, budget ledger) and the audit recorder.
    """

    def __init__(
        self,
        *,
        local: LocalChat,
        policy: PolicySource,
        cloud: CloudRoute,
        audit: AuditRecorder,
        pace: LocalPace | None = None,
    ) -> None:
        self._local = local
        self._policy = policy
        self._cloud = cloud
        self._audit = audit
        self.pace = pace if pace is not None else LocalPace()

    def set_overrides(self, overrides: LocalPolicyOverrides) -> None:
        self._policy.set_overrides(overrides)

    def effective_policy(self) -> EffectivePolicy:
        return self._policy.effective()

    def connectivity_state(self) -> str:
        return self._cloud.state()

    def _decide(self, spec: ChatSpec, call: CallContext, now: datetime) -> Decision:
        policy = self._policy.effective()
        context = self._local.context_length()
        # The routing estimate takes a typical token; admission's errs high.
        prompt = estimate_prompt_tokens(spec, TYPICAL_CHARS_PER_TOKEN)
        default_max = max(context - prompt, 1) if context else _DEFAULT_MAX_TOKENS
        pressure, queue_wait = self._local.route_view(spec)
        request = RouteRequest(
            client_id=call.client_id,
            data_class=_CLASS_NAMES[spec.data_class],
            route=_ROUTES[spec.route],  # type: ignore[arg-type]
            prompt_tokens=prompt,
            max_tokens=spec.max_tokens or default_max,
            deadline_s=(call.deadline - time.monotonic()) if call.deadline else None,
            local_context_length=context,
            local_queue_wait_s=queue_wait,
            model=spec.model or None,
            local_answer_s=self.pace.answer_s(spec.max_tokens, queue_wait),
        )

        def budget() -> BudgetView:
            # Read only when the cloud is still a candidate (a SQLite read per request).
            return self._cloud.budget_view(
                now, call.client_id, self._policy.credential_id(), policy
            )

        return decide(
            request,
            pressure,
            self._cloud.state(),
            policy,
            budget,
            now,
            cloud_check=self._cloud.capability_check(spec, policy),
        )

    async def chat(self, spec: ChatSpec, call: CallContext) -> AsyncGenerator[ChatChunk, None]:
        now = datetime.now(UTC)
        decision = self._decide(spec, call, now)
        outcome = Outcome(decision)
        try:
            if decision.destination == "reject" and decision.need == "context_exceeded":
                # The estimate said "too long" and the cloud may not take it: the local path
                # measures exactly and answers with the precise field error (or serves it).
                inner = self._local_chat(spec, call, decision.reason, outcome)
            elif decision.destination == "reject":
                self._reject(decision)
            elif decision.destination == "cloud":
                self._cloud.metrics.escalated(decision.need or "requested")
                inner = self._cloud_chat(spec, call, decision, now, outcome)
            else:
                inner = self._local_chat(spec, call, decision.reason, outcome)
            # Closed here, not by the garbage collector: its cleanup (budget, connections)
            # must be done before the audit record is written and before the daemon stops.
            async with contextlib.aclosing(inner):
                async for chunk in inner:
                    yield chunk
        finally:
            await self._audit.record(spec, call, outcome)

    def _reject(self, decision: Decision) -> NoReturn:
        admission = self._local.admission
        queued = admission.stats.queued if admission is not None else 0
        raise ResourceExhausted(
            f"the box cannot take this request now and may not escalate ({decision.blocker})",
            retry_after_ms=queued * 1000 + 1000,
        )

    def _ended(self, call: CallContext) -> str:
        """Why a stream stopped without finishing: the deadline or the client's cancel."""
        # gRPC's own timer may fire a few milliseconds before our copy of the deadline.
        if call.deadline is not None and time.monotonic() >= call.deadline - 0.05:
            return "deadline"
        return "cancelled"

    async def _local_chat(
        self,
        spec: ChatSpec,
        call: CallContext,
        reason: str,
        outcome: Outcome,
        continue_from: str = "",
    ) -> AsyncGenerator[ChatChunk, None]:
        model = self._local.engine.model
        leg = LegRecord("local", model=f"{model.name}@{model.version}")
        outcome.legs.append(leg)
        outcome.final_reason = reason  # the same string the provenance below carries
        stream = self._local.chat(spec, call, reason=reason, continue_from=continue_from)
        try:
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    if chunk.usage is not None:
                        leg.tokens_in = chunk.usage.prompt_tokens
                        leg.tokens_out = chunk.usage.completion_tokens
                        leg.usage = "reported"
                    if chunk.provenance is not None:
                        leg.provider = chunk.provenance.execution_provider
                    if chunk.finish_reason is not None:
                        leg.outcome = "ok"
                        self._observe_pace(chunk)
                    yield chunk
        except EdgeAgentError as exc:
            leg.outcome = exc.code.name.lower()
            raise
        except (GeneratorExit, asyncio.CancelledError):
            leg.outcome = self._ended(call)
            raise

    def _observe_pace(self, chunk: ChatChunk) -> None:
        t, u = chunk.timing, chunk.usage
        if t is not None and u is not None:
            self.pace.observe(
                t.time_to_first_token_ms / 1000, t.total_ms / 1000, u.completion_tokens
            )

    async def _cloud_chat(
        self,
        spec: ChatSpec,
        call: CallContext,
        decision: Decision,
        now: datetime,
        outcome: Outcome,
    ) -> AsyncGenerator[ChatChunk, None]:
        cloud_deadline = self._cloud_deadline(spec, call, decision)
        leg: CloudLeg | None = None
        fallback_reason = f"local.{decision.need}_but_deadline_too_short"
        if cloud_deadline is None or cloud_deadline > asyncio.get_running_loop().time():
            try:
                leg = await CloudLeg.reserve(
                    self._cloud,
                    spec,
                    self._policy.effective(),
                    decision,
                    client_id=call.client_id,
                    credential_id=self._policy.credential_id(),
                    now=now,
                )
            except ResourceExhausted:
                # Another request took the last of the budget since the decision: stay local.
                fallback_reason = "local.budget_reserved_by_others"
        if leg is None:
            fallback = self._local_chat(spec, call, fallback_reason, outcome)
            async with contextlib.aclosing(fallback):
                async for local_chunk in fallback:
                    yield local_chunk
            return
        outcome.legs.append(leg.record)
        failovers: list[FailoverEvent] = []

        def local(text_so_far: str) -> AsyncIterator[ChatChunk]:
            reason = (
                "local.cloud_failover" if text_so_far else "local.cloud_failed_before_first_token"
            )
            return self._local_chat(spec, call, reason, outcome, continue_from=text_so_far)

        remaining = (call.deadline - time.monotonic()) if call.deadline else None
        config = self._cloud.config
        stream = failover_stream(
            leg.stream(timeout_s=remaining),
            local,
            mode=config.failover,
            first_token_timeout_s=config.first_token_timeout_s,
            inter_chunk_timeout_s=config.event_timeout_s,
            on_failover=failovers.append,
            observer=self._cloud.connectivity,
            cloud_deadline=cloud_deadline,
        )
        try:
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    prov = chunk.provenance
                    if chunk.finish_reason is not None and prov and prov.destination == "cloud":
                        outcome.final_reason = decision.reason
                        chunk = await leg.finish(chunk, decision.reason)
                    yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            if leg.record.outcome == "cancelled":
                leg.record.outcome = self._ended(call)
            raise
        finally:
            await leg.close(failovers, decision.reason)

    def _cloud_deadline(
        self, spec: ChatSpec, call: CallContext, decision: Decision
    ) -> float | None:
        """When the cloud must have finished (a ``loop.time()`` instant) so that a local
        answer still fits the client's deadline; None without one."""
        if call.deadline is None or decision.need not in LOCAL_CAN_ANSWER:
            return None
        local_s = self.pace.answer_s(spec.max_tokens, 0.0)
        loop = asyncio.get_running_loop()
        return loop.time() + (call.deadline - time.monotonic()) - local_s
