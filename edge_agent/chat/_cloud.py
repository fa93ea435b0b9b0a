"""The cloud leg: what the router knows, and one attempt's reserve → stream → settle.

:class:`CloudRoute` is the cloud side of the chat path (router client, connectivity and
catalog, configuration, budget ledger, metrics) and answers what routing asks of it: is it
up, what do the models cost now, which provider can take tools or a schema, what has been
spent. :class:`CloudLeg` is one attempt: :meth:`CloudLeg.reserve` holds the decision's worst
case in the ledger, :meth:`CloudLeg.stream` turns the router's stream into the chat path's
chunks, :meth:`CloudLeg.finish` settles with the router's usage before the final chunk goes
out, and :meth:`CloudLeg.close` settles or releases whatever is still open (a failure, a
cancel) by what reached the provider. Ledger calls run in a thread and are shielded from
cancellation, so a cancel or a deadline never leaves a reservation open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from edge_agent.chat._record import LegRecord
from edge_agent.chat._types import (
    ChatChunk,
    ChatSpec,
    Provenance,
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
    cost_usd,
    parse_model_ref,
)
from edge_agent.errors import InvalidArgument
from edge_agent.metrics import Metrics
from edge_agent.policy import (
    BudgetLedger,
    BudgetView,
    CloudCheck,
    Decision,
    EffectivePolicy,
    ModelPrice,
    Reservation,
)

__all__ = ["CloudLeg", "CloudRoute"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# What a cloud answer may cost when the client set no max_tokens (reservation worst case).
CLOUD_DEFAULT_MAX_TOKENS = 1024
# A 404 for the model is recorded as the model state status and metrics show.
_KIND_NAMES = {"not_found": "model_unavailable"}


async def _shielded(fn: Callable[[], _T]) -> _T:
    """Run a blocking ledger call in a thread and finish it even if we are cancelled.

    ``asyncio.to_thread`` cancelled before its thread starts never runs the call: a second
    cancellation during cleanup (deadline, then shutdown) left reservations open that way.
    """
    future = asyncio.get_running_loop().run_in_executor(None, fn)
    return await asyncio.shield(future)


@dataclass(frozen=True)
class CloudRoute:
    """The cloud side of the chat path. ``client`` None: no cloud at all."""

    client: RouterClient | None
    connectivity: ConnectivityMonitor | None
    config: CloudConfig
    ledger: BudgetLedger
    metrics: Metrics

    def state(self) -> str:
        if self.connectivity is None or self.client is None:
            return "disabled"
        return str(self.connectivity.snapshot().state.value)

    def live_prices(self, policy: EffectivePolicy) -> dict[str, ModelPrice]:
        """The router's current prices of the policy's models (reservations take the higher)."""
        catalog = self.connectivity.catalog if self.connectivity is not None else None
        if catalog is None:
            return {}
        prices = {}
        for model in policy.models:
            with contextlib.suppress(Exception):
                p = catalog.pricing_for(parse_model_ref(model))
                if p is not None:
                    prices[model] = ModelPrice(float(p.input_per_mtok), float(p.output_per_mtok))
        return prices

    def budget_view(
        self, now: datetime, client_id: str, credential_id: str, policy: EffectivePolicy
    ) -> BudgetView:
        return self.ledger.view(now, client_id, credential_id, self.live_prices(policy))

    def capability_check(self, spec: ChatSpec, policy: EffectivePolicy) -> CloudCheck:
        """The router's account and capability state for :func:`edge_agent.policy.decide`."""
        monitor = self.connectivity
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

    def price(self, usage: Usage, model: str, provider: str, policy: EffectivePolicy) -> float:
        """What ``usage`` cost: the router's live price, else the fleet's figure."""
        price = None
        catalog = self.connectivity.catalog if self.connectivity is not None else None
        if catalog is not None:
            with contextlib.suppress(Exception):
                price = catalog.pricing_for(parse_model_ref(model), provider or None)
        if price is not None:
            return float(cost_usd(usage, price))
        fleet = policy.models.get(model.split(":")[0])
        if fleet is None:
            return 0.0
        return float(Decimal(str(fleet.cost(usage.prompt_tokens, usage.completion_tokens))))


def cloud_request(spec: ChatSpec, decision: Decision) -> CloudChatRequest:
    """What the router client sends for ``spec`` (raises for what it refuses)."""
    model = decision.cloud_model or ""
    return CloudChatRequest(
        messages=spec.messages,
        model=f"{model}:{decision.cloud_provider}" if decision.cloud_provider else model,
        max_tokens=spec.max_tokens or CLOUD_DEFAULT_MAX_TOKENS,
        temperature=spec.temperature,
        top_p=spec.top_p,
        stop=spec.stop,
        seed=spec.seed,
        json_schema=spec.json_schema,
        tools=spec.tools,
        tool_choice=spec.tool_choice,
        parallel_tool_calls=spec.parallel_tool_calls,
    )


class CloudLeg:
    """One cloud attempt and its budget reservation (see the module docstring)."""

    def __init__(
        self,
        route: CloudRoute,
        spec: ChatSpec,
        policy: EffectivePolicy,
        decision: Decision,
        request: CloudChatRequest,
        reservation: Reservation,
    ) -> None:
        self._route = route
        self.request = request
        self._spec = spec
        self._policy = policy
        self._model = decision.cloud_model or ""
        self._reservation = reservation
        self.record = LegRecord("cloud", model=self._model, provider=decision.cloud_provider or "")
        self.attempt = CloudAttempt()
        self._usage: Usage | None = None
        self._served_by = ("", "")
        self._t0 = time.perf_counter()
        self._t_first: float | None = None

    @classmethod
    async def reserve(
        cls,
        route: CloudRoute,
        spec: ChatSpec,
        policy: EffectivePolicy,
        decision: Decision,
        *,
        client_id: str,
        credential_id: str,
        now: datetime,
    ) -> CloudLeg:
        """Hold the decision's worst case in the ledger (``ResourceExhausted`` when another
        request took the last of the budget since the decision)."""
        # Built before the reservation: a request it refuses must not leave one open.
        request = cloud_request(spec, decision)
        reserve = functools.partial(
            route.ledger.reserve,
            policy,
            client_id=client_id,
            tokens=decision.estimated_tokens,
            usd=decision.estimated_usd,
            now=now,
            credential_id=credential_id,
        )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, reserve)
        try:
            reservation = await asyncio.shield(future)
        except asyncio.CancelledError:
            # Cancelled meanwhile: release the reservation once it exists.
            def release(done: asyncio.Future[Reservation]) -> None:
                if not done.cancelled() and done.exception() is None:
                    loop.run_in_executor(None, route.ledger.release, done.result())

            future.add_done_callback(release)
            raise
        return cls(route, spec, policy, decision, request, reservation)

    async def stream(self, *, timeout_s: float | None) -> AsyncGenerator[ChatChunk, None]:
        """The router's answer as chat chunks; the last has the router's ``finish_reason``
        and usage (None when it sent none) and cloud provenance, to pass to :meth:`finish`."""
        assert self._route.client is not None
        self._t0 = time.perf_counter()
        cloud = self._route.client.stream_chat(
            self.request, timeout_s=timeout_s, attempt=self.attempt
        )
        async with contextlib.aclosing(cloud):
            async for chunk in cloud:
                if chunk.delta:
                    self._t_first = self._t_first or time.perf_counter()
                if chunk.model or chunk.provider:
                    self._served_by = (
                        chunk.model or self._served_by[0],
                        chunk.provider or self._served_by[1],
                    )
                if chunk.usage is not None:
                    self._usage = chunk.usage
                if chunk.finish_reason is None:
                    yield ChatChunk(delta=chunk.delta)
                    continue
                yield ChatChunk(
                    delta=chunk.delta,
                    finish_reason=chunk.finish_reason,
                    tool_calls=chunk.tool_calls,
                    usage=chunk.usage,
                    provenance=Provenance(
                        destination="cloud",
                        model=self._served_by[0] or self._model,
                        cloud_provider=self._served_by[1] or self.record.provider,
                    ),
                )

    async def finish(self, chunk: ChatChunk, reason: str) -> ChatChunk:
        """The answer is complete: settle by the router's usage, then the client's last chunk."""
        end = time.perf_counter()
        leg = self.record
        leg.outcome = "ok"
        if chunk.provenance is not None:
            leg.model, leg.provider = chunk.provenance.model, chunk.provenance.cloud_provider
        await self._close()
        finish = "length" if chunk.finish_reason == "length" else "stop"
        return ChatChunk(
            delta=chunk.delta,
            finish_reason="tool_calls" if chunk.tool_calls else finish,
            tool_calls=chunk.tool_calls,
            usage=Usage(leg.tokens_in, leg.tokens_out),
            provenance=Provenance(
                destination="cloud",
                model=leg.model,
                cloud_provider=leg.provider,
                decision_reason=reason,
            ),
            timing=Timing(0.0, ((self._t_first or end) - self._t0) * 1000, (end - self._t0) * 1000),
        )

    async def close(self, failovers: Sequence[FailoverEvent], reason: str) -> None:
        """After the stream, however it ended: name the outcome, settle or release what is
        still reserved, and count the attempt."""
        leg, attempt, connectivity = self.record, self.attempt, self._route.connectivity
        for event in failovers:
            leg.outcome = _KIND_NAMES.get(event.kind, event.kind)
            _log.warning("cloud %s at %s (%s): %s", event.kind, event.stage, event.action, reason)
        if leg.outcome == "cancelled" and attempt.error_kind:
            leg.outcome = _KIND_NAMES.get(attempt.error_kind, attempt.error_kind)
        if attempt.error_kind in ("model_unavailable", "not_found") and connectivity:
            connectivity.model_unavailable(self._model)
        if not leg.closed:  # not settled by finish()
            leg.provider = self._served_by[1] or attempt.provider or leg.provider
            await self._close()
        # The outcome label names account states (account_exhausted, rate_limited, ...).
        self._route.metrics.request_finished(
            leg.outcome,
            "cloud",
            tokens_in=leg.tokens_in if attempt.may_be_billed else 0,
            tokens_out=leg.tokens_out if attempt.may_be_billed else 0,
        )

    async def _close(self) -> None:
        """Settle or release the reservation by what reached the provider, and say so."""
        leg, attempt, reservation = self.record, self.attempt, self._reservation
        ledger, usage = self._route.ledger, self._usage
        leg.sent, leg.status, leg.closed = attempt.sent, attempt.status, True
        if not attempt.may_be_billed:
            # Nothing reached a provider (no connection, or the router refused it).
            leg.usage = "none"
            await _shielded(functools.partial(ledger.release, reservation))
            return
        if usage is not None:
            leg.tokens_in, leg.tokens_out = usage.prompt_tokens, usage.completion_tokens
            leg.usage = "reported"
            leg.cost = self._route.price(usage, leg.model, leg.provider, self._policy)
            tokens, usd = usage.total_tokens, leg.cost
        else:
            # Accepted but no usage report: the provider may bill up to max_tokens.
            leg.tokens_in = estimate_prompt_tokens(self._spec)
            leg.tokens_out = max(reservation.tokens - leg.tokens_in, 0)
            leg.usage = "worst_case"
            leg.cost = reservation.usd
            tokens, usd = reservation.tokens, reservation.usd
        await _shielded(functools.partial(ledger.settle, reservation, tokens=tokens, usd=usd))
