"""Is the cloud usable right now? A circuit breaker fed by probes and by real requests.

States (``Connectivity``, a ``StrEnum`` so ``state == "online"`` works for the decision):

* ``disabled`` – air-gapped or no credential loaded: nothing is probed, no socket opened.
* ``offline``  – the breaker is open (repeated failures, a refused credential, no balance,
  a 429 with Retry-After), or nothing has succeeded yet. ``reason`` says which:
  ``unreachable``, ``credential_rejected`` (401/403), ``account_exhausted`` (402: recovers
  only by a real request after ``breaker_max_open_s``, since a probe cannot see a balance),
  ``rate_limited`` (429; ``retry_in_s`` is the router's Retry-After).
* ``degraded`` – usable, but the last outcome failed, the breaker is half-open (trial
  traffic), or the last round trip was slower than ``degraded_latency_ms``.
* ``online``   – usable.

Breaker rules: transport/server/protocol failures count; ``breaker_failure_threshold`` in a
row open it for ``breaker_open_s``, doubling on each failed trial up to
``breaker_max_open_s``. A refused credential (401/403) or no balance (402) opens it at once
for the maximum; a 429 with Retry-After opens it for that long. Request-specific refusals
(400, 404) do not count: they say nothing about the route. While open, outcomes do not
close it early; after the cooldown it is half-open and the next success closes it.

Probes run every ``probe_interval_s`` (``HEAD /models``, or a full ``GET /models`` when the
cached catalog is older than ``catalog_refresh_s``); while failing they back off
exponentially from ``probe_backoff_initial_s`` to ``probe_backoff_max_s`` with jitter.
All methods must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from edge_agent.cloud._client import RouterClient
from edge_agent.cloud._errors import CloudDisabled, CloudRouterError
from edge_agent.cloud._models import ModelCatalog

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "Connectivity",
    "ConnectivityMonitor",
    "ConnectivitySnapshot",
]

_log = logging.getLogger(__name__)

_TRIP_KINDS = {
    "auth": "credential_rejected",
    "forbidden": "credential_rejected",
    "account_exhausted": "account_exhausted",
}
# About the request or one model, not the route: they never move the breaker.
_IGNORED_KINDS = frozenset({"not_found", "bad_request", "disabled", "model_unavailable"})


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Connectivity(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"
    DISABLED = "disabled"


class CircuitBreaker:
    """Closed → open after N failures → half-open after a cooldown → closed on success."""

    def __init__(
        self,
        *,
        failure_threshold: int,
        open_s: float,
        max_open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._open_s = open_s
        self._max_open_s = max_open_s
        self._clock = clock
        self._open_until: float | None = None
        self._reopens = 0
        self.consecutive_failures = 0

    @property
    def state(self) -> BreakerState:
        if self._open_until is None:
            return BreakerState.CLOSED
        if self._clock() < self._open_until:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def open_remaining_s(self) -> float | None:
        if self._open_until is None:
            return None
        return max(0.0, self._open_until - self._clock())

    def _open(self, hold_s: float) -> None:
        until = self._clock() + hold_s
        self._open_until = until if self._open_until is None else max(self._open_until, until)

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return  # the cooldown stands; a trial after it decides
        self._open_until = None
        self._reopens = 0
        self.consecutive_failures = 0

    def record_failure(self) -> None:
        state = self.state
        self.consecutive_failures += 1
        if state is BreakerState.HALF_OPEN:
            self._reopens += 1
            self._open_until = None
            self._open(min(self._max_open_s, self._open_s * 2.0**self._reopens))
        elif state is BreakerState.CLOSED and self.consecutive_failures >= self._threshold:
            self._open(self._open_s)

    def trip(self, hold_s: float) -> None:
        """Open now for ``hold_s`` (clamped to the configured range)."""
        self.consecutive_failures += 1
        self._open(min(self._max_open_s, max(self._open_s, hold_s)))


@dataclass(frozen=True, slots=True)
class ConnectivitySnapshot:
    """What GetStatus, metrics and the routing decision read. Times are Unix seconds."""

    state: Connectivity
    reason: str
    breaker: BreakerState
    consecutive_failures: int
    last_failure_kind: str | None
    last_latency_ms: float | None
    last_success_at: float | None
    last_failure_at: float | None
    last_probe_at: float | None  # Unix seconds of the last probe that ran (None: never)
    retry_in_s: float | None
    probes_ok: int
    probes_failed: int
    requests_ok: int
    requests_failed: int
    unavailable_models: tuple[str, ...] = ()  # refused as not served (model_unavailable)

    @property
    def cloud_usable(self) -> bool:
        return self.state in (Connectivity.ONLINE, Connectivity.DEGRADED)

    def probe_age_s(self, now: float) -> float | None:
        """Seconds since the last probe at Unix time ``now`` (None before the first)."""
        return None if self.last_probe_at is None else max(0.0, now - self.last_probe_at)


class ConnectivityMonitor:
    """Probes the router on a timer and keeps the breaker; attach it to the client's outcomes.

    ``on_change`` is called with the new snapshot whenever state or reason changes (metrics,
    sd_notify STATUS). The client's air-gapped flag is the single source of truth.
    """

    def __init__(
        self,
        client: RouterClient,
        *,
        on_change: Callable[[ConnectivitySnapshot], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        config = client.config
        self._client = client
        self._config = config
        self._on_change = on_change
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng
        self._breaker = CircuitBreaker(
            failure_threshold=config.breaker_failure_threshold,
            open_s=config.breaker_open_s,
            max_open_s=config.breaker_max_open_s,
            clock=clock,
        )
        self._open_reason = "unreachable"
        self._last_kind: str | None = None
        self._last_latency: float | None = None
        self._last_success: float | None = None
        self._last_failure: float | None = None
        self._last_probe: float | None = None
        self._unavailable: dict[str, float] = {}  # model id -> monotonic time it may retry
        self._counts = {"probes_ok": 0, "probes_failed": 0, "requests_ok": 0, "requests_failed": 0}
        self._probe_failures = 0
        self._catalog: ModelCatalog | None = None
        self._catalog_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._last_seen: tuple[Connectivity, str] | None = None
        client.attach_observer(self)

    @property
    def catalog(self) -> ModelCatalog | None:
        """The router's model list from the last successful refresh (None until one)."""
        return self._catalog

    # -- outcomes ---------------------------------------------------------------------------

    def record_success(self, latency_ms: float | None = None) -> None:
        self._counts["requests_ok"] += 1
        self._success(latency_ms)

    def record_failure(self, kind: str, retry_after_s: float | None = None) -> None:
        self._counts["requests_failed"] += 1
        self._failure(kind, retry_after_s)

    def model_unavailable(self, model_id: str) -> None:
        """The router said no enabled provider serves ``model_id``: skip it for a while.

        Recovery: after ``breaker_max_open_s`` the model is tried again (enabling a
        provider in the account settings is invisible to probes).
        """
        self._unavailable[model_id] = self._clock() + self._config.breaker_max_open_s
        self._notify(force=True)

    def is_model_unavailable(self, model_id: str) -> bool:
        until = self._unavailable.get(model_id)
        if until is None:
            return False
        if self._clock() >= until:
            del self._unavailable[model_id]
            return False
        return True

    def _success(self, latency_ms: float | None) -> None:
        self._last_success = self._wall()
        if latency_ms is not None:
            self._last_latency = latency_ms
        self._breaker.record_success()
        self._notify()

    def _failure(self, kind: str, retry_after_s: float | None) -> None:
        if kind in _IGNORED_KINDS:
            return
        self._last_failure = self._wall()
        self._last_kind = kind
        if kind in _TRIP_KINDS:
            self._open_reason = _TRIP_KINDS[kind]
            self._breaker.trip(self._config.breaker_max_open_s)
        elif kind == "rate_limited" and retry_after_s is not None:
            self._open_reason = "rate_limited"
            self._breaker.trip(retry_after_s)
        else:
            if self._breaker.state is not BreakerState.OPEN:
                self._open_reason = "rate_limited" if kind == "rate_limited" else "unreachable"
            self._breaker.record_failure()
        self._notify()

    # -- snapshot ---------------------------------------------------------------------------

    def _state(self) -> tuple[Connectivity, str]:
        if self._client.air_gapped:
            return Connectivity.DISABLED, "air_gapped"
        if not self._client.has_credential():
            return Connectivity.DISABLED, "no_credential"
        breaker = self._breaker.state
        if breaker is BreakerState.OPEN:
            return Connectivity.OFFLINE, self._open_reason
        if self._last_success is None:
            if self._last_failure is None:
                return Connectivity.OFFLINE, "not_checked"
            return Connectivity.OFFLINE, "unreachable"
        if breaker is BreakerState.HALF_OPEN:
            return Connectivity.DEGRADED, "recovering"
        if self._breaker.consecutive_failures:
            # A 429 without Retry-After is still the router's word, not a broken uplink.
            limited = self._last_kind == "rate_limited"
            return Connectivity.DEGRADED, "rate_limited" if limited else "recent_failures"
        if self._last_latency is not None and self._last_latency > self._config.degraded_latency_ms:
            return Connectivity.DEGRADED, "slow"
        return Connectivity.ONLINE, "ok"

    def snapshot(self) -> ConnectivitySnapshot:
        state, reason = self._state()
        return ConnectivitySnapshot(
            state=state,
            reason=reason,
            breaker=self._breaker.state,
            consecutive_failures=self._breaker.consecutive_failures,
            last_failure_kind=self._last_kind,
            last_latency_ms=self._last_latency,
            last_success_at=self._last_success,
            last_failure_at=self._last_failure,
            last_probe_at=self._last_probe,
            retry_in_s=self._breaker.open_remaining_s(),
            **self._counts,
            unavailable_models=tuple(
                sorted(m for m in list(self._unavailable) if self.is_model_unavailable(m))
            ),
        )

    def _notify(self, *, force: bool = False) -> None:
        seen = self._state()
        if seen == self._last_seen and not force:
            return
        self._last_seen = seen
        if self._on_change is not None:
            try:
                self._on_change(self.snapshot())
            except Exception:
                _log.exception("connectivity on_change callback failed")

    # -- probing ----------------------------------------------------------------------------

    def _backoff(self) -> float:
        c = self._config
        base = min(
            c.probe_backoff_max_s,
            c.probe_backoff_initial_s * 2.0 ** max(0, self._probe_failures - 1),
        )
        return base * (0.5 + 0.5 * self._rng())

    async def probe_now(self) -> ConnectivitySnapshot:
        """Run one probe now (no I/O while disabled) and return the resulting snapshot."""
        await self._tick()
        return self.snapshot()

    async def _tick(self) -> float:
        """One probe; returns the delay until the next one."""
        async with self._lock:
            interval = self._config.probe_interval_s
            if self._client.air_gapped or not self._client.has_credential():
                self._notify()
                return interval
            refresh = (
                self._catalog_at is None
                or self._clock() - self._catalog_at >= self._config.catalog_refresh_s
            )
            try:
                started = self._clock()
                if refresh:
                    catalog = await self._client.list_models()
                    latency = (self._clock() - started) * 1000.0
                    self._catalog, self._catalog_at = catalog, self._clock()
                else:
                    latency = await self._client.probe()
            except CloudDisabled:
                self._notify()
                return interval
            except CloudRouterError as exc:
                self._last_probe = self._wall()
                self._counts["probes_failed"] += 1
                self._probe_failures += 1
                self._failure(exc.kind, getattr(exc, "retry_after_s", None))
                return self._backoff()
            self._last_probe = self._wall()
            self._counts["probes_ok"] += 1
            self._probe_failures = 0
            self._success(latency)
            remaining = self._breaker.open_remaining_s()
            if remaining is not None and self._breaker.state is BreakerState.OPEN:
                # Reachable again but cooling down: confirm as soon as the cooldown ends.
                return min(interval, remaining + 0.01)
            return interval

    async def _run(self) -> None:
        while True:
            try:
                delay = await self._tick()
            except Exception as exc:
                # A bug must not silently end probing; name only the type (no secrets).
                _log.error("connectivity probe failed unexpectedly: %s", type(exc).__name__)
                self._probe_failures += 1
                delay = self._backoff()
            await asyncio.sleep(delay)

    async def start(self) -> None:
        if self._task is None:
            self._notify()
            self._task = asyncio.create_task(self._run(), name="edge-agent-connectivity")

    async def stop(self) -> None:
        """Cancel the probe loop and wait for it; nothing of the monitor runs afterwards."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller is being cancelled too: do not swallow that
