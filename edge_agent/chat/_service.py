"""Where a chat runs: the decision, the local or cloud stream, failover, budget and audit.

Every request goes through :func:`edge_agent.policy.decide` (a pure function) with the live
pressure, connectivity, effective policy, budget and the router's catalog. Local is the
default; the cloud is used only when the local path cannot serve well and everything
permits. A client deadline is budgeted: the cloud may use only what the deadline leaves
after a local answer's measured cost (:class:`edge_agent.policy.LocalPace`), so a late or
silent cloud still ends in a local answer in time. A cloud failure before the first token
falls back to local; a cut mid-stream continues locally from the text so far or ends with a
clear status (``cloud.failover``).

Each request keeps one :class:`_Outcome`: its legs (cloud, then local), where each ran, what
it used. The client's provenance and the audit record are both read from it, so they agree.
Every inner stream is closed explicitly, and budget settlement runs shielded from
cancellation, so a cancel or a deadline never leaves a reservation open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import NoReturn, TypeVar

from edge_agent.audit import AuditAttempt, AuditEntry, AuditLog
from edge_agent.chat._local import LocalChat
from edge_agent.chat._types import (
    TYPICAL_CHARS_PER_TOKEN,
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
from edge_agent.cloud import (
    CloudAttempt,
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
from edge_agent.credentials import CredentialStore
from edge_agent.errors import EdgeAgentError, InvalidArgument, ResourceExhausted
from edge_agent.metrics import Metrics
from edge_agent.policy import (
    LOCAL_CAN_ANSWER,
    BudgetLedger,
    BudgetView,
    Decision,
    EffectivePolicy,
    LocalPace,
    LocalPolicyOverrides,
    ModelPrice,
    PolicyStore,
    PressureView,
    Reservation,
    RouteRequest,
    decide,
    merge_policy,
)
from edge_agent.pressure import AdmissionController, PressureMonitor

__all__ = ["ChatService"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
# A 404 for the model is recorded as the model state status and metrics show.
_KIND_NAMES = {"not_found": "model_unavailable"}


@dataclass
class _Leg:
    """One attempt at answering (becomes an ``AuditAttempt``)."""

    destination: str
    model: str = ""
    provider: str = ""
    outcome: str = "cancelled"
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    usage: str = "none"
    sent: bool = False
    status: int | None = None
    closed: bool = False  # cloud: its reservation is settled or released


@dataclass
class _Outcome:
    """Everything that happened to one request: the client's provenance and the audit."""

    decision: Decision
    legs: list[_Leg] = field(default_factory=list)
    final_reason: str = ""

    def __post_init__(self) -> None:
        self.final_reason = self.final_reason or self.decision.reason

    @property
    def left_box(self) -> bool:
        return any(leg.destination == "cloud" and leg.sent for leg in self.legs)

    def destination(self) -> str:
        if self.left_box:
            return "cloud"
        if self.decision.destination == "reject" and not any(
            leg.outcome == "ok" for leg in self.legs
        ):
            return "reject"
        return "local"


async def _shielded(fn: Callable[[], _T]) -> _T:
    """Run a blocking ledger call in a thread and finish it even if we are cancelled.

    ``asyncio.to_thread`` cancelled before its thread starts never runs the call: a second
    cancellation during cleanup (deadline, then shutdown) left reservations open that way.
    """
    future = asyncio.get_running_loop().run_in_executor(None, fn)
    return await asyncio.shield(future)


class ChatService:
    """Decides and runs each chat; the API layer calls :meth:`chat`."""

    def __init__(
        self,
        *,
        local: LocalChat,
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
        pace: LocalPace | None = None,
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
        self.pace = pace if pace is not None else LocalPace()

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

    def _cloud_check(
        self, spec: ChatSpec, policy: EffectivePolicy
    ) -> Callable[[str, str | None], tuple[str | None, str | None]]:
        """The router's account and capability state for :func:`decide`."""
        monitor = self._connectivity
        needs_tools = bool(spec.tools)
        needs_schema = spec.json_schema is not None

        def check(model: str, provider: str | None) -> tuple[str | None, str | None]:
            if monitor is not None and monitor.is_model_unavailable(model):
                return provider, "model_unavailable"
            if not (needs_tools or needs_schema):
                return provider, None
            catalog = monitor.catalog if monitor is not None else None
            if catalog is None:
                return provider, "no_capable_provider"  # unknown capabilities: do not guess
            try:
                ref = parse_model_ref(f"{model}:{provider}" if provider else model)
            except InvalidArgument:
                return provider, "no_capable_provider"
            chosen = catalog.choose_provider(
                ref,
                structured_output=needs_schema,
                tools=needs_tools,
                allowed=policy.allowed_providers,
            )
            return (chosen, None) if chosen else (provider, "no_capable_provider")

        return check

    def _decide(self, spec: ChatSpec, call: CallContext, now: datetime) -> Decision:
        policy = self.effective_policy()
        context = self._local.context_length()
        # The routing estimate takes a typical token; admission's errs high.
        prompt = estimate_prompt_tokens(spec, TYPICAL_CHARS_PER_TOKEN)
        default_max = max(context - prompt, 1) if context else _CLOUD_DEFAULT_MAX_TOKENS
        snapshot = self._pressure.snapshot
        level = snapshot.level.label if snapshot is not None else "ok"
        room = self._admission.room_bytes()
        cost = self._local.estimate_cost_bytes(spec)
        stats = self._admission.stats
        info = self._credentials.info()
        queue_wait = stats.queued * _QUEUE_SECONDS_PER_WAITER
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
            return self._ledger.view(
                now, call.client_id, info.envelope_id if info else "", self._live_prices(policy)
            )

        pressure = PressureView(
            level=level,  # type: ignore[arg-type]
            local_admissible=level != "critical" and (room is None or cost <= room),
        )
        return decide(
            request,
            pressure,
            self.connectivity_state(),
            policy,
            budget,
            now,
            cloud_check=self._cloud_check(spec, policy),
        )

    async def chat(self, spec: ChatSpec, call: CallContext) -> AsyncGenerator[ChatChunk, None]:
        now = datetime.now(UTC)
        decision = self._decide(spec, call, now)
        outcome = _Outcome(decision)
        try:
            if decision.destination == "reject" and decision.need == "context_exceeded":
                # The estimate said "too long" and the cloud may not take it: the local path
                # measures exactly and answers with the precise field error (or serves it).
                inner = self._local_chat(spec, call, decision.reason, outcome)
            elif decision.destination == "reject":
                self._reject(decision)
            elif decision.destination == "cloud":
                self._metrics.escalated(decision.need or "requested")
                inner = self._cloud_chat(spec, call, decision, now, outcome)
            else:
                inner = self._local_chat(spec, call, decision.reason, outcome)
            # Closed here, not by the garbage collector: its cleanup (budget, connections)
            # must be done before the audit record is written and before the daemon stops.
            async with contextlib.aclosing(inner):
                async for chunk in inner:
                    yield chunk
        finally:
            await self._record(spec, call, outcome)

    def _reject(self, decision: Decision) -> NoReturn:
        raise ResourceExhausted(
            f"the box cannot take this request now and may not escalate ({decision.blocker})",
            retry_after_ms=self._admission.stats.queued * 1000 + 1000,
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
        outcome: _Outcome,
        continue_from: str = "",
    ) -> AsyncGenerator[ChatChunk, None]:
        model = self._local.engine.model
        leg = _Leg("local", model=f"{model.name}@{model.version}")
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
        outcome: _Outcome,
    ) -> AsyncGenerator[ChatChunk, None]:
        assert self._cloud is not None
        policy = self.effective_policy()
        info = self._credentials.info()
        loop = asyncio.get_running_loop()
        cloud_deadline: float | None = None
        if call.deadline is not None and decision.need in LOCAL_CAN_ANSWER:
            # The cloud may use what the deadline leaves after a local answer.
            local_s = self.pace.answer_s(spec.max_tokens, 0.0)
            cloud_deadline = loop.time() + (call.deadline - time.monotonic()) - local_s
            if cloud_deadline <= loop.time():
                fallback = self._local_chat(
                    spec, call, f"local.{decision.need}_but_deadline_too_short", outcome
                )
                async with contextlib.aclosing(fallback):
                    async for local_chunk in fallback:
                        yield local_chunk
                return
        model = decision.cloud_model or ""
        ref = f"{model}:{decision.cloud_provider}" if decision.cloud_provider else model
        # Built before the reservation: a request it refuses must not leave one open.
        request = CloudChatRequest(
            messages=spec.messages,
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
        try:
            reservation = await self._reserve(
                functools.partial(
                    self._ledger.reserve,
                    policy,
                    client_id=call.client_id,
                    tokens=decision.estimated_tokens,
                    usd=decision.estimated_usd,
                    now=now,
                    credential_id=info.envelope_id if info else "",
                )
            )
        except ResourceExhausted:
            # Another request took the last of the budget since the decision: stay local.
            fallback = self._local_chat(spec, call, "local.budget_reserved_by_others", outcome)
            async with contextlib.aclosing(fallback):
                async for local_chunk in fallback:
                    yield local_chunk
            return
        leg = _Leg("cloud", model=model, provider=decision.cloud_provider or "")
        outcome.legs.append(leg)
        attempt = CloudAttempt()
        remaining = (call.deadline - time.monotonic()) if call.deadline else None
        failovers: list[FailoverEvent] = []
        local_chunks: list[ChatChunk] = []

        async def local_stream(text_so_far: str) -> AsyncIterator[StreamChunk]:
            reason = (
                "local.cloud_failover" if text_so_far else "local.cloud_failed_before_first_token"
            )
            inner = self._local_chat(spec, call, reason, outcome, continue_from=text_so_far)
            async with contextlib.aclosing(inner):
                async for c in inner:
                    local_chunks.append(c)
                    yield StreamChunk(delta=c.delta, source="local", finish_reason=c.finish_reason)

        t0 = time.perf_counter()
        t_first: float | None = None
        cloud_usage: Usage | None = None
        served_by = ("", "")
        cloud = self._cloud.stream_chat(request, timeout_s=remaining, attempt=attempt)
        stream = failover_stream(
            cloud,
            local_stream,
            mode=self._cloud_config.failover,
            first_token_timeout_s=self._cloud_config.first_token_timeout_s,
            inter_chunk_timeout_s=self._cloud_config.event_timeout_s,
            on_failover=failovers.append,
            observer=self._connectivity,
            cloud_deadline=cloud_deadline,
        )
        try:
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    if chunk.source == "local":
                        # The local final chunk already carries usage and provenance.
                        yield local_chunks[-1] if local_chunks else ChatChunk(delta=chunk.delta)
                        continue
                    if chunk.delta:
                        t_first = t_first or time.perf_counter()
                    if chunk.model or chunk.provider:
                        served_by = (chunk.model or served_by[0], chunk.provider or served_by[1])
                    if chunk.usage is not None:
                        cloud_usage = chunk.usage
                    if chunk.finish_reason is None:
                        yield ChatChunk(delta=chunk.delta)
                        continue
                    end = time.perf_counter()
                    leg.outcome = "ok"
                    leg.model, leg.provider = served_by[0] or model, served_by[1] or leg.provider
                    await self._close_cloud_leg(leg, attempt, reservation, cloud_usage, spec)
                    outcome.final_reason = decision.reason
                    finish = "length" if chunk.finish_reason == "length" else "stop"
                    yield ChatChunk(
                        delta=chunk.delta,
                        finish_reason="tool_calls" if chunk.tool_calls else finish,
                        tool_calls=chunk.tool_calls,
                        usage=Usage(leg.tokens_in, leg.tokens_out),
                        provenance=Provenance(
                            destination="cloud",
                            model=leg.model,
                            cloud_provider=leg.provider,
                            decision_reason=outcome.final_reason,
                        ),
                        timing=Timing(0.0, ((t_first or end) - t0) * 1000, (end - t0) * 1000),
                    )
        except (GeneratorExit, asyncio.CancelledError):
            if leg.outcome == "cancelled":
                leg.outcome = self._ended(call)
            raise
        finally:
            for event in failovers:
                leg.outcome = _KIND_NAMES.get(event.kind, event.kind)
                _log.warning(
                    "cloud %s at %s (%s): %s",
                    event.kind,
                    event.stage,
                    event.action,
                    decision.reason,
                )
            if leg.outcome == "cancelled" and attempt.error_kind:
                leg.outcome = _KIND_NAMES.get(attempt.error_kind, attempt.error_kind)
            if attempt.error_kind in ("model_unavailable", "not_found") and self._connectivity:
                self._connectivity.model_unavailable(model)
            if not leg.closed:  # not closed on the success path above
                leg.provider = served_by[1] or attempt.provider or leg.provider
                await self._close_cloud_leg(leg, attempt, reservation, cloud_usage, spec)
            # The outcome label names account states (account_exhausted, rate_limited, ...).
            self._metrics.request_finished(
                leg.outcome,
                "cloud",
                tokens_in=leg.tokens_in if attempt.may_be_billed else 0,
                tokens_out=leg.tokens_out if attempt.may_be_billed else 0,
            )

    async def _reserve(self, reserve: Callable[[], Reservation]) -> Reservation:
        """Reserve in a thread; a cancel meanwhile releases the reservation once it exists."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, reserve)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:

            def release(done: asyncio.Future[Reservation]) -> None:
                if not done.cancelled() and done.exception() is None:
                    loop.run_in_executor(None, self._ledger.release, done.result())

            future.add_done_callback(release)
            raise

    async def _close_cloud_leg(
        self,
        leg: _Leg,
        attempt: CloudAttempt,
        reservation: Reservation,
        usage: Usage | None,
        spec: ChatSpec,
    ) -> None:
        """Settle or release the reservation by what reached the provider, and say so."""
        leg.sent, leg.status, leg.closed = attempt.sent, attempt.status, True
        if not attempt.may_be_billed:
            # Nothing reached a provider (no connection, or the router refused it).
            leg.usage = "none"
            await _shielded(functools.partial(self._ledger.release, reservation))
            return
        if usage is not None:
            leg.tokens_in, leg.tokens_out = usage.prompt_tokens, usage.completion_tokens
            leg.usage = "reported"
            leg.cost = self._price(usage, leg.model, leg.provider)
            tokens, usd = usage.total_tokens, leg.cost
        else:
            # Accepted but no usage report: the provider may bill up to max_tokens.
            leg.tokens_in = estimate_prompt_tokens(spec)
            leg.tokens_out = max(reservation.tokens - leg.tokens_in, 0)
            leg.usage = "worst_case"
            leg.cost = reservation.usd
            tokens, usd = reservation.tokens, reservation.usd
        await _shielded(functools.partial(self._ledger.settle, reservation, tokens=tokens, usd=usd))

    def _price(self, usage: Usage, model: str, provider: str) -> float:
        price = None
        catalog = self._connectivity.catalog if self._connectivity is not None else None
        if catalog is not None:
            with contextlib.suppress(Exception):
                price = catalog.pricing_for(parse_model_ref(model), provider or None)
        if price is not None:
            return float(cost_usd(usage, price))
        fleet = self.effective_policy().models.get(model.split(":")[0])
        if fleet is None:
            return 0.0
        return float(Decimal(str(fleet.cost(usage.prompt_tokens, usage.completion_tokens))))

    async def _record(self, spec: ChatSpec, call: CallContext, outcome: _Outcome) -> None:
        decision = outcome.decision
        prompt = None
        if self._include_prompts:
            prompt = "\n".join(f"{m.role}: {m.content}" for m in spec.messages)
        legs = outcome.legs
        # The leg that names the record: the cloud one whenever the prompt left the box.
        main = next(
            (leg for leg in legs if leg.destination == "cloud" and leg.sent),
            legs[-1] if legs else None,
        )
        fallback = outcome.final_reason if outcome.final_reason != decision.reason else ""
        entry = AuditEntry(
            request_id=call.request_id,
            client_id=call.client_id,
            data_class=decision.data_class,
            destination=outcome.destination(),
            reason=decision.reason,
            tokens_in=sum(leg.tokens_in for leg in legs),
            tokens_out=sum(leg.tokens_out for leg in legs),
            cost_usd=sum(leg.cost for leg in legs),
            model=main.model if main else "",
            provider=main.provider if main else "",
            prompt=prompt,
            left_box=outcome.left_box,
            fallback_reason=fallback,
            attempts=tuple(
                AuditAttempt(
                    destination=leg.destination,
                    model=leg.model,
                    provider=leg.provider,
                    outcome=leg.outcome,
                    tokens_in=leg.tokens_in,
                    tokens_out=leg.tokens_out,
                    cost_usd=leg.cost,
                    usage=leg.usage,
                    sent=leg.sent,
                    http_status=leg.status,
                )
                for leg in legs
            ),
        )
        try:
            await self._audit.append_async(entry)
        except asyncio.CancelledError:
            raise  # the group commit still writes it
        except Exception:
            # The answer was already given; a failing disk must be loud, not silent.
            _log.exception("could not append to the audit log")
