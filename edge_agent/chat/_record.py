"""What happened to one chat, and its audit record.

Each request keeps one :class:`Outcome`: its legs (cloud, then local), where each ran, what
it used. The client's provenance and the audit record are both read from it, so they agree.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from edge_agent.audit import AuditAttempt, AuditEntry, AuditLog
from edge_agent.chat._types import CallContext, ChatSpec
from edge_agent.policy import Decision

__all__ = ["AuditRecorder", "LegRecord", "Outcome"]

_log = logging.getLogger(__name__)


@dataclass
class LegRecord:
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
class Outcome:
    """Everything that happened to one request: the client's provenance and the audit."""

    decision: Decision
    legs: list[LegRecord] = field(default_factory=list)
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


class AuditRecorder:
    """Writes one hash-chained record per chat (prompt text only when configured)."""

    def __init__(self, audit: AuditLog, *, include_prompts: bool = False) -> None:
        self._audit = audit
        self._include_prompts = include_prompts

    def entry(self, spec: ChatSpec, call: CallContext, outcome: Outcome) -> AuditEntry:
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
        return AuditEntry(
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

    async def record(self, spec: ChatSpec, call: CallContext, outcome: Outcome) -> None:
        try:
            await self._audit.append_async(self.entry(spec, call, outcome))
        except asyncio.CancelledError:
            raise  # the group commit still writes it
        except Exception:
            # The answer was already given; a failing disk must be loud, not silent.
            _log.exception("could not append to the audit log")
