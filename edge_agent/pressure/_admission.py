"""Memory-aware admission for the local engine: admit, queue, shed or refuse.

A request reserves its worst-case memory (KV cache for prompt + max_tokens, plus a fixed
overhead) for its whole life. It is admitted when a concurrency slot is free and its cost fits
in what the box can spare::

    memory room = MemAvailable + reclaimable - reserve - (held - kv_in_use)
    kv room     = engine KV capacity - held                  (when the engine reports one)

``held`` is what admitted requests reserved; ``kv_in_use`` (reported by the engine) is the
part of it already allocated and therefore already missing from MemAvailable, so it is not
subtracted twice. ``reclaimable`` is the KV cache of the engine's idle cached lanes (prefix
reuse): allocated, but the first memory given back. A request admitted on that part of the
room makes the controller ask the engine to free it (``reclaim``) before the request reaches
the engine; memory pressure frees all of it.

Waiters form a bounded priority queue (higher priority first, FIFO within a priority, no
overtaking so large requests are not starved). A full queue sheds its lowest priority waiter
for a more important newcomer. Refusals raise ``ResourceExhausted`` with a
``retry_after_ms`` estimate for the ``grpc-retry-pushback-ms`` trailer.

Everything runs on the event loop thread; no locks are needed and none are taken.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

from edge_agent.errors import DeadlineExceeded, ResourceExhausted
from edge_agent.pressure._config import AdmissionConfig
from edge_agent.pressure._types import PressureLevel, PressureSnapshot

__all__ = [
    "AdmissionController",
    "AdmissionStats",
    "Ticket",
    "context_from_genai_config",
    "estimate_request_bytes",
    "kv_bytes_per_token",
    "kv_bytes_per_token_from_genai_config",
    "read_genai_config",
]

_MIB = 1024 * 1024
LOWER_MAX_TOKENS = "lower max_tokens"


def kv_bytes_per_token(
    num_layers: int, num_kv_heads: int, head_size: int, element_bytes: int = 2
) -> int:
    """K and V for every layer: 2 × layers × KV heads × head size × bytes per element."""
    for name, value in (
        ("num_layers", num_layers),
        ("num_kv_heads", num_kv_heads),
        ("head_size", head_size),
        ("element_bytes", element_bytes),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive")
    return 2 * num_layers * num_kv_heads * head_size * element_bytes


def kv_bytes_per_token_from_genai_config(config: Mapping[str, object], element_bytes: int) -> int:
    """From a parsed ``genai_config.json``; ``element_bytes`` is 4 for CPU fp32 KV, 2 for fp16."""
    model = config.get("model")
    decoder = model.get("decoder") if isinstance(model, Mapping) else None
    if not isinstance(decoder, Mapping):
        raise ValueError("genai_config has no model.decoder section")
    values: dict[str, int] = {}
    for key in ("num_hidden_layers", "num_key_value_heads", "head_size"):
        value = decoder.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"genai_config model.decoder.{key} is missing or not an integer")
        values[key] = value
    return kv_bytes_per_token(
        values["num_hidden_layers"], values["num_key_value_heads"], values["head_size"],
        element_bytes,
    )  # fmt: skip


def read_genai_config(model_dir: Path) -> dict[str, object]:
    """A model folder's ``genai_config.json`` as a JSON object, for the readers below
    (``OSError`` when unreadable, ``ValueError`` when not a JSON object)."""
    doc = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("genai_config.json is not a JSON object")
    return doc


def context_from_genai_config(config: Mapping[str, object]) -> int:
    """The one context of a model, from a parsed ``genai_config.json``.

    The static engine preallocates the KV cache for ``search.max_length`` tokens per sequence
    and cannot go past it; ``model.context_length`` is what the model was trained for. The
    worker's prompt limit, ``max_tokens`` checks, admission's cost and the bundle's facts all
    use the smaller, so what admission reserves is what the engine allocates.
    """
    model = config.get("model")
    context = model.get("context_length") if isinstance(model, Mapping) else None
    if not isinstance(context, int) or isinstance(context, bool) or context < 1:
        raise ValueError("genai_config model.context_length is missing or not a positive integer")
    search = config.get("search")
    max_length = search.get("max_length") if isinstance(search, Mapping) else None
    if max_length is None:
        return context
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError("genai_config search.max_length is not a positive integer")
    return min(context, max_length)


def estimate_request_bytes(
    kv_per_token: int,
    prompt_tokens: int,
    max_tokens: int,
    overhead_bytes: int,
    *,
    preallocated_tokens: int | None = None,
) -> int:
    """Worst-case memory of one request.

    With ``past_present_share_buffer`` (the CPU default) the runtime allocates the KV buffer
    for the whole ``max_length`` up front: pass that as ``preallocated_tokens``.
    """
    if prompt_tokens < 0 or max_tokens < 0:
        raise ValueError("token counts must not be negative")
    tokens = prompt_tokens + max_tokens if preallocated_tokens is None else preallocated_tokens
    return kv_per_token * tokens + overhead_bytes


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    """Counters for GetStatus and metrics; totals count since the controller was made."""

    active: int
    queued: int
    held_bytes: int
    max_active: int
    admitted_total: int
    # By reason: critical, queue_full, shed, memory, too_large, timeout, deadline.
    refused_total: Mapping[str, int] = field(default_factory=dict)
    cancelled_total: int = 0


class Ticket:
    """An admitted request's reservation; ``release()`` (idempotent) gives it back."""

    __slots__ = ("_controller", "_released", "admitted_at", "cost_bytes", "priority", "waited_s")

    def __init__(
        self, controller: AdmissionController, cost_bytes: int, priority: int, waited_s: float
    ) -> None:
        self._controller = controller
        self._released = False
        self.cost_bytes = cost_bytes
        self.priority = priority
        self.waited_s = waited_s
        self.admitted_at = controller._clock()

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._controller._release(self)

    def __repr__(self) -> str:
        return f"Ticket(cost_bytes={self.cost_bytes}, priority={self.priority})"


@dataclass(slots=True)
class _Waiter:
    sort_key: tuple[int, int]  # (-priority, arrival): smallest is served first
    cost_bytes: int
    priority: int
    enqueued_at: float
    future: asyncio.Future[Ticket]
    ticket: Ticket | None = None

    def __lt__(self, other: _Waiter) -> bool:
        return self.sort_key < other.sort_key


class AdmissionController:
    """Gates the local engine by concurrency, memory and pressure level."""

    def __init__(
        self,
        config: AdmissionConfig,
        *,
        max_active: int,
        snapshot: Callable[[], PressureSnapshot | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        reclaim: Callable[[int], int] | None = None,
    ) -> None:
        """``reclaim(n)``: ask the engine to free ``n`` bytes of idle cached KV (all when
        negative); returns what it will free."""
        if max_active < 1:
            raise ValueError("max_active must be at least 1")
        self._config = config
        self._max_active = max_active
        self._snapshot = snapshot
        self._clock = clock
        self._active = 0
        self._held = 0
        self._queue: list[_Waiter] = []
        self._arrivals = itertools.count()
        self._admitted_total = 0
        self._cancelled_total = 0
        self._refused: Counter[str] = Counter()
        self._hold_ewma_s: float | None = None
        self._reclaim = reclaim
        # Bytes asked back since the snapshot of this sequence (which does not show it yet).
        self._reclaimed: tuple[int, int] = (-1, 0)

    # -- public API -------------------------------------------------------------------------

    @property
    def stats(self) -> AdmissionStats:
        return AdmissionStats(
            active=self._active,
            queued=len(self._queue),
            held_bytes=self._held,
            max_active=self._max_active,
            admitted_total=self._admitted_total,
            refused_total=MappingProxyType(dict(self._refused)),
            cancelled_total=self._cancelled_total,
        )

    def set_max_active(self, max_active: int) -> None:
        """Follow the engine's lanes × batch size after a (re)start or model swap."""
        if max_active < 1:
            raise ValueError("max_active must be at least 1")
        self._max_active = max_active
        self._pump()

    def on_snapshot(self, snapshot: PressureSnapshot) -> None:
        """Monitor listener: memory may have been freed, or the level may have dropped.

        Memory pressure first frees the engine's idle cached KV (prefix reuse): it is an
        optimisation, never worth swapping or an OOM kill."""
        engine = snapshot.engine
        if (
            self._reclaim is not None
            and engine is not None
            and engine.kv_bytes_reclaimable > 0
            and any(name.startswith(("memory.", "swap.")) for name, _ in snapshot.signal_levels)
        ):
            self._note_reclaimed(snapshot, self._reclaim(-1))
        self._pump()

    def memory_room_bytes(self) -> int | None:
        """Free memory beyond the reserve and what admitted requests still hold: what a model
        being trial-loaded beside the active one may take. ``None`` when not measured."""
        snapshot = self._snapshot()
        if snapshot is None or snapshot.memory is None:
            return None
        engine = snapshot.engine
        kv_in_use = engine.kv_bytes_in_use if engine is not None else 0
        available = snapshot.memory.available_bytes - self._config.memory_reserve_bytes
        return available - max(0, self._held - kv_in_use)

    def room_bytes(self) -> int | None:
        """What a new request may use now; ``None`` when nothing limits it but concurrency."""
        return self._room(self._snapshot(), idle=False)

    def snapshot(self) -> PressureSnapshot | None:
        """The pressure snapshot admission decides by (routing reads the same one)."""
        return self._snapshot()

    @contextlib.asynccontextmanager
    async def admit(
        self,
        *,
        cost_bytes: int,
        priority: int = 0,
        deadline: float | None = None,
        shrink_hint: str = LOWER_MAX_TOKENS,
    ) -> AsyncIterator[Ticket]:
        """``async with controller.admit(...) as ticket:``; released on exit or cancellation.

        ``deadline`` is a ``time.monotonic()`` instant (the caller's gRPC deadline).
        ``shrink_hint`` ends the refusal of a request that can never fit: what would make it
        smaller (a preallocating engine's cost does not follow max_tokens).
        """
        ticket = await self.acquire(
            cost_bytes=cost_bytes, priority=priority, deadline=deadline, shrink_hint=shrink_hint
        )
        try:
            yield ticket
        finally:
            ticket.release()

    async def acquire(
        self,
        *,
        cost_bytes: int,
        priority: int = 0,
        deadline: float | None = None,
        shrink_hint: str = LOWER_MAX_TOKENS,
    ) -> Ticket:
        """Wait for admission; the caller must ``release()`` the ticket (prefer ``admit``)."""
        if cost_bytes < 0:
            raise ValueError("cost_bytes must not be negative")
        now = self._clock()
        if deadline is not None and deadline <= now:
            self._refused["deadline"] += 1
            raise DeadlineExceeded("the request's deadline passed before admission")
        snapshot = self._snapshot()
        self._check_never_fits(cost_bytes, snapshot, shrink_hint)
        if (
            self._config.refuse_when_critical
            and snapshot is not None
            and snapshot.level is PressureLevel.CRITICAL
        ):
            self._refuse("critical", "the box is under critical resource pressure")
        waiter = _Waiter(
            sort_key=(-priority, next(self._arrivals)),
            cost_bytes=cost_bytes,
            priority=priority,
            enqueued_at=now,
            future=asyncio.get_running_loop().create_future(),
        )
        self._enqueue(waiter)
        self._pump()
        if waiter.ticket is not None:  # admitted at once: no suspension, no timer
            return waiter.ticket
        limit = now + self._config.max_queue_wait_s
        own_deadline = deadline is not None and deadline <= limit
        wake_at = deadline if own_deadline and deadline is not None else limit
        try:
            async with asyncio.timeout(wake_at - now):
                return await waiter.future
        except TimeoutError:
            if waiter.ticket is not None:  # granted in the same loop turn as the timeout
                return waiter.ticket
            self._discard(waiter)
            if own_deadline:
                self._refused["deadline"] += 1
                raise DeadlineExceeded("the request's deadline passed while queued") from None
            self._refuse("timeout", "the request waited too long for local capacity")
        except BaseException:
            # Cancelled (client went away) or shed: never keep a grant nobody will release.
            if waiter.ticket is not None:
                waiter.ticket.release()
            elif not waiter.future.done() or waiter.future.cancelled():
                self._cancelled_total += 1
            self._discard(waiter)
            raise

    # -- decisions --------------------------------------------------------------------------

    def _room(
        self, snapshot: PressureSnapshot | None, *, idle: bool, reclaimable: bool = True
    ) -> int | None:
        """Spare bytes now (``idle=False``) or once our own requests finished (``idle=True``);
        ``reclaimable=False``: without asking the engine to free its cached lanes."""
        rooms: list[int] = []
        engine = snapshot.engine if snapshot is not None else None
        kv_in_use = engine.kv_bytes_in_use if engine is not None else 0
        held = 0 if idle else self._held
        if snapshot is not None and snapshot.memory is not None:
            available = snapshot.memory.available_bytes - self._config.memory_reserve_bytes
            # Cached KV asked back is freed memory, whether the sample shows it yet or not.
            cached = engine.kv_bytes_reclaimable if engine is not None else 0
            asked = self._reclaimed[1] if self._reclaimed[0] == snapshot.sequence else 0
            available += min(asked, cached) + (max(0, cached - asked) if reclaimable else 0)
            if idle:
                rooms.append(available + kv_in_use)
            else:
                rooms.append(available - max(0, held - kv_in_use))
        if engine is not None and engine.kv_bytes_capacity is not None:
            rooms.append(engine.kv_bytes_capacity - held)
        return min(rooms) if rooms else None

    def _check_never_fits(
        self, cost: int, snapshot: PressureSnapshot | None, shrink_hint: str
    ) -> None:
        engine = snapshot.engine if snapshot is not None else None
        capacity = engine.kv_bytes_capacity if engine is not None else None
        memory = snapshot.memory if snapshot is not None else None
        ceiling = None
        if memory is not None:
            limit = memory.cgroup_limit_bytes or memory.total_bytes
            ceiling = limit - self._config.memory_reserve_bytes
        if capacity is not None:
            ceiling = capacity if ceiling is None else min(ceiling, capacity)
        if ceiling is not None and cost > ceiling:
            self._refused["too_large"] += 1
            # No retry hint: waiting cannot help, a smaller request (or model) can.
            raise ResourceExhausted(
                f"the request needs {math.ceil(cost / _MIB)} MiB, more than this box can ever "
                f"give one request ({max(0, ceiling) // _MIB} MiB); {shrink_hint}"
            )
        idle_room = self._room(snapshot, idle=True)
        if idle_room is not None and cost > idle_room:
            # Memory is taken by something other than our own requests: queueing behind them
            # would not free it, so answer now and let the caller retry or escalate.
            self._refuse("memory", "not enough free memory for this request now")

    def _refuse(self, reason: str, message: str) -> NoReturn:
        self._refused[reason] += 1
        raise ResourceExhausted(message, retry_after_ms=self._retry_after_ms(reason))

    def _retry_after_ms(self, reason: str) -> int:
        cfg = self._config
        if self._hold_ewma_s is None or reason in ("critical", "memory"):
            # Pressure and foreign memory use clear on their own schedule, not ours.
            estimate_ms = float(cfg.retry_after_default_ms)
        else:
            rounds = math.ceil((len(self._queue) + 1) / self._max_active)
            estimate_ms = self._hold_ewma_s * rounds * 1000.0
        return int(min(cfg.retry_after_max_ms, max(cfg.retry_after_min_ms, estimate_ms)))

    # -- queue ------------------------------------------------------------------------------

    def _enqueue(self, waiter: _Waiter) -> None:
        if len(self._queue) >= self._config.max_queue:
            lowest = self._queue[-1] if self._queue else None
            if lowest is None or lowest.priority >= waiter.priority:
                self._refuse("queue_full", "the local queue is full")
            assert lowest is not None
            self._queue.pop()
            self._refused["shed"] += 1
            lowest.future.set_exception(
                ResourceExhausted(
                    "shed for a higher-priority request",
                    retry_after_ms=self._retry_after_ms("shed"),
                )
            )
        bisect.insort(self._queue, waiter)

    def _discard(self, waiter: _Waiter) -> None:
        index = bisect.bisect_left(self._queue, waiter)
        if index < len(self._queue) and self._queue[index] is waiter:
            del self._queue[index]
            self._pump()  # a blocked head leaving may unblock the next one

    def _pump(self) -> None:
        """Admit waiters from the head while they fit; the head blocks those behind it."""
        snapshot = self._snapshot()
        critical = (
            self._config.refuse_when_critical
            and snapshot is not None
            and snapshot.level is PressureLevel.CRITICAL
        )
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled or timed out, its task will discard it
                self._queue.pop(0)
                continue
            if critical or self._active >= self._max_active:
                return
            room = self._room(snapshot, idle=False)
            if room is not None and head.cost_bytes > room:
                idle_room = self._room(snapshot, idle=True)
                if idle_room is not None and head.cost_bytes > idle_room:
                    self._queue.pop(0)
                    self._refused["memory"] += 1
                    head.future.set_exception(
                        ResourceExhausted(
                            "not enough free memory for this request now",
                            retry_after_ms=self._retry_after_ms("memory"),
                        )
                    )
                    continue
                return
            self._take_back_cache(head.cost_bytes, snapshot)
            self._queue.pop(0)
            self._active += 1
            self._held += head.cost_bytes
            self._admitted_total += 1
            ticket = Ticket(self, head.cost_bytes, head.priority, self._clock() - head.enqueued_at)
            head.ticket = ticket
            head.future.set_result(ticket)

    def _take_back_cache(self, cost: int, snapshot: PressureSnapshot | None) -> None:
        """Before admitting ``cost`` on room the engine's cached lanes hold, ask for it."""
        if self._reclaim is None or snapshot is None:
            return
        bare = self._room(snapshot, idle=False, reclaimable=False)
        if bare is not None and cost > bare:
            self._note_reclaimed(snapshot, self._reclaim(cost - bare))

    def _note_reclaimed(self, snapshot: PressureSnapshot, nbytes: int) -> None:
        sequence, asked = self._reclaimed
        before = asked if sequence == snapshot.sequence else 0
        self._reclaimed = (snapshot.sequence, before + nbytes)

    def _release(self, ticket: Ticket) -> None:
        self._active -= 1
        self._held -= ticket.cost_bytes
        held_for = self._clock() - ticket.admitted_at
        # EWMA of how long a request holds its slot: the basis of the retry estimate.
        if self._hold_ewma_s is None:
            self._hold_ewma_s = held_for
        else:
            self._hold_ewma_s = 0.8 * self._hold_ewma_s + 0.2 * held_for
        self._pump()
