"""Admission: concurrency, memory budget, bounded priority queue, shedding, deadlines,
cancellation that never leaks capacity, and refusal under critical pressure."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from pressure_support import Box

from edge_agent.errors import DeadlineExceeded, ResourceExhausted
from edge_agent.pressure import (
    AdmissionConfig,
    AdmissionController,
    EngineLoad,
    PressureLevel,
    Ticket,
    estimate_request_bytes,
    kv_bytes_per_token,
    kv_bytes_per_token_from_genai_config,
)

MIB = 1024**2
GIB = 1024**3


def controller(
    max_active: int = 2, box: Box | None = None, **config: object
) -> AdmissionController:
    cfg = AdmissionConfig(**config)  # type: ignore[arg-type]
    if box is None:
        return AdmissionController(cfg, max_active=max_active)
    return AdmissionController(cfg, max_active=max_active, snapshot=lambda: box.snapshot)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def assert_idle(c: AdmissionController) -> None:
    s = c.stats
    assert (s.active, s.queued, s.held_bytes) == (0, 0, 0)


def test_kv_arithmetic_for_mistral_small_3() -> None:
    # 40 layers, 8 KV heads, head size 128: fp16 160 KiB per token, fp32 (CPU) twice that.
    assert kv_bytes_per_token(40, 8, 128, 2) == 160 * 1024
    assert kv_bytes_per_token(40, 8, 128, 4) == 320 * 1024
    genai = {"model": {"decoder": {"num_hidden_layers": 2, "num_key_value_heads": 2,
                                   "head_size": 32}}}  # fmt: skip
    assert kv_bytes_per_token_from_genai_config(genai, 4) == 2 * 2 * 2 * 32 * 4
    with pytest.raises(ValueError, match="num_key_value_heads"):
        kv_bytes_per_token_from_genai_config({"model": {"decoder": {"num_hidden_layers": 2}}}, 4)
    assert estimate_request_bytes(1000, 100, 400, 16 * MIB) == 500_000 + 16 * MIB
    assert estimate_request_bytes(1000, 100, 400, 0, preallocated_tokens=4096) == 4_096_000


async def test_concurrency_limit_queues_then_admits_on_release() -> None:
    c = controller(max_active=2)
    a = await c.acquire(cost_bytes=1)
    b = await c.acquire(cost_bytes=1)
    third = asyncio.create_task(c.acquire(cost_bytes=1))
    await settle()
    assert not third.done()
    assert c.stats.queued == 1
    assert c.stats.active == 2
    a.release()
    a.release()  # idempotent
    ticket = await asyncio.wait_for(third, 1)
    assert ticket.waited_s >= 0
    assert c.stats.active == 2
    b.release()
    ticket.release()
    assert_idle(c)
    assert c.stats.admitted_total == 3


async def test_queue_full_answers_resource_exhausted_with_pushback() -> None:
    now = [100.0]
    c = AdmissionController(
        AdmissionConfig(max_queue=2, retry_after_min_ms=50, retry_after_max_ms=60_000),
        max_active=1,
        clock=lambda: now[0],
    )
    first = await c.acquire(cost_bytes=1)
    now[0] += 2.0  # it held its slot two seconds: the basis of the estimate
    first.release()
    holder = await c.acquire(cost_bytes=1)
    waiters = [asyncio.create_task(c.acquire(cost_bytes=1)) for _ in range(2)]
    await settle()
    with pytest.raises(ResourceExhausted) as info:
        await c.acquire(cost_bytes=1)
    # Two queued ahead plus this one, one slot, two seconds each.
    assert info.value.retry_after_ms == 6000
    assert info.value.code.name == "RESOURCE_EXHAUSTED"
    assert c.stats.refused_total == {"queue_full": 1}
    holder.release()
    for w in waiters:
        (await w).release()
    assert_idle(c)


async def test_priority_order_and_fifo_within_a_priority() -> None:
    c = controller(max_active=1)
    holder = await c.acquire(cost_bytes=1)
    order: list[str] = []

    async def run(name: str, priority: int) -> None:
        async with c.admit(cost_bytes=1, priority=priority):
            order.append(name)

    tasks = []
    for name, prio in (("low1", 0), ("high1", 5), ("low2", 0), ("mid", 2), ("high2", 5)):
        tasks.append(asyncio.create_task(run(name, prio)))
        await settle()
    holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert order == ["high1", "high2", "mid", "low1", "low2"]
    assert_idle(c)


async def test_full_queue_sheds_lowest_priority_for_a_more_important_request() -> None:
    c = controller(max_active=1, max_queue=2)
    holder = await c.acquire(cost_bytes=1)
    low_old = asyncio.create_task(c.acquire(cost_bytes=1, priority=1))
    await settle()
    low_new = asyncio.create_task(c.acquire(cost_bytes=1, priority=1))
    await settle()
    # Equal priority does not shed: the newcomer is refused instead.
    with pytest.raises(ResourceExhausted):
        await c.acquire(cost_bytes=1, priority=1)
    urgent = asyncio.create_task(c.acquire(cost_bytes=1, priority=9))
    await settle()
    with pytest.raises(ResourceExhausted) as info:
        await low_new  # the latest of the lowest priority goes first
    assert info.value.retry_after_ms is not None
    assert "shed" in info.value.message
    assert not low_old.done()
    holder.release()
    (await asyncio.wait_for(urgent, 1)).release()
    (await asyncio.wait_for(low_old, 1)).release()
    assert c.stats.refused_total == {"queue_full": 1, "shed": 1}
    assert_idle(c)


async def test_deadlines_and_max_wait() -> None:
    c = controller(max_active=1, max_queue_wait_s=0.2)
    holder = await c.acquire(cost_bytes=1)
    with pytest.raises(DeadlineExceeded):
        await c.acquire(cost_bytes=1, deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded):
        await c.acquire(cost_bytes=1, deadline=time.monotonic() + 0.05)
    with pytest.raises(ResourceExhausted) as info:
        await c.acquire(cost_bytes=1, deadline=time.monotonic() + 60)  # max wait is shorter
    assert info.value.retry_after_ms is not None
    assert c.stats.refused_total == {"deadline": 2, "timeout": 1}
    assert c.stats.queued == 0
    holder.release()
    assert_idle(c)


async def test_cancelled_waiter_and_holder_leak_nothing() -> None:
    c = controller(max_active=1)
    holder = await c.acquire(cost_bytes=10)
    waiter = asyncio.create_task(c.acquire(cost_bytes=20))
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert c.stats.queued == 0
    assert c.stats.cancelled_total == 1
    holder.release()

    entered = asyncio.Event()

    async def hold_forever() -> None:
        async with c.admit(cost_bytes=30):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(hold_forever())
    await entered.wait()
    assert c.stats.held_bytes == 30
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_idle(c)


async def test_cancel_in_the_same_turn_as_the_grant_releases_the_grant() -> None:
    c = controller(max_active=1)
    holder = await c.acquire(cost_bytes=1)
    waiter = asyncio.create_task(c.acquire(cost_bytes=5))
    await settle()
    holder.release()  # grants the waiter synchronously: its future now holds a ticket
    assert c.stats.active == 1
    waiter.cancel()  # ...but its task is cancelled before it ever runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert_idle(c)


@pytest.mark.parametrize("seed", range(3))
async def test_random_cancellations_never_leak(seed: int) -> None:
    rng = random.Random(seed)
    c = controller(max_active=3, max_queue=20, max_queue_wait_s=0.5)
    outcomes: list[str] = []

    async def client() -> None:
        try:
            async with c.admit(cost_bytes=rng.randint(1, 100), priority=rng.randint(0, 3)):
                await asyncio.sleep(rng.uniform(0, 0.01))
            outcomes.append("done")
        except ResourceExhausted:
            outcomes.append("refused")

    tasks = [asyncio.create_task(client()) for _ in range(60)]
    for _ in range(25):
        await asyncio.sleep(rng.uniform(0, 0.003))
        rng.choice(tasks).cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert_idle(c)
    assert "done" in outcomes


async def test_memory_budget_queue_and_refusal(tmp_path: Path) -> None:
    box = Box(tmp_path, total=16 * GIB, available=10 * GIB)
    c = controller(max_active=8, box=box, memory_reserve_bytes=1 * GIB)
    assert c.room_bytes() == 9 * GIB
    a = await c.acquire(cost_bytes=4 * GIB)
    b = await c.acquire(cost_bytes=4 * GIB)
    assert c.room_bytes() == 1 * GIB
    queued = asyncio.create_task(c.acquire(cost_bytes=4 * GIB))
    await settle()
    assert not queued.done()  # fits once ours finish: worth waiting for
    # A small one would fit, but does not overtake the head (large ones must not starve).
    small = asyncio.create_task(c.acquire(cost_bytes=512 * MIB))
    await settle()
    assert not small.done()
    with pytest.raises(ResourceExhausted) as info:  # memory others hold: refuse at once
        await c.acquire(cost_bytes=12 * GIB)
    assert info.value.retry_after_ms == AdmissionConfig().retry_after_default_ms
    with pytest.raises(ResourceExhausted) as too_large:  # can never fit on this box
        await c.acquire(cost_bytes=20 * GIB)
    assert too_large.value.retry_after_ms is None
    assert "lower max_tokens" in too_large.value.message
    a.release()  # 5 GiB room: the large waiter, then the small one behind it
    large_ticket = await asyncio.wait_for(queued, 1)
    small_ticket = await asyncio.wait_for(small, 1)
    assert c.stats.held_bytes == 8 * GIB + 512 * MIB
    for t in (large_ticket, small_ticket, b):
        t.release()
    assert_idle(c)
    assert c.stats.refused_total == {"memory": 1, "too_large": 1}


async def test_kv_in_use_is_not_counted_twice(tmp_path: Path) -> None:
    box = Box(tmp_path, total=16 * GIB, available=10 * GIB)
    c = controller(max_active=8, box=box, memory_reserve_bytes=1 * GIB)
    a = await c.acquire(cost_bytes=4 * GIB)
    assert c.room_bytes() == 5 * GIB
    # The engine allocated 3 GiB of that reservation: MemAvailable already shows it gone.
    box.tree.set_memory(total=16 * GIB, available=7 * GIB)
    box.engine = EngineLoad(active_requests=1, kv_bytes_in_use=3 * GIB)
    box.resample()
    assert c.room_bytes() == 5 * GIB
    a.release()


async def test_engine_kv_capacity_limits_admission(tmp_path: Path) -> None:
    box = Box(tmp_path, total=64 * GIB, available=60 * GIB)
    box.engine = EngineLoad(kv_bytes_capacity=1 * GIB)
    box.resample()
    c = controller(max_active=8, box=box)
    with pytest.raises(ResourceExhausted, match="more than this box can ever give"):
        await c.acquire(cost_bytes=2 * GIB)
    a = await c.acquire(cost_bytes=600 * MIB)
    second = asyncio.create_task(c.acquire(cost_bytes=600 * MIB))
    await settle()
    assert not second.done()
    a.release()
    (await asyncio.wait_for(second, 1)).release()
    assert_idle(c)


async def test_critical_pressure_refuses_new_work_and_holds_the_queue(tmp_path: Path) -> None:
    box = Box(tmp_path, total=16 * GIB, available=10 * GIB)
    c = controller(max_active=1, box=box)
    running = await c.acquire(cost_bytes=1)
    queued = asyncio.create_task(c.acquire(cost_bytes=1))
    await settle()
    box.tree.set_psi("memory", 50.0, 30.0)  # memory full avg10 30 % ≥ 20: critical
    box.resample()
    assert box.snapshot.level is PressureLevel.CRITICAL
    with pytest.raises(ResourceExhausted, match="critical") as info:
        await c.acquire(cost_bytes=1)
    assert info.value.retry_after_ms == 1000
    running.release()  # running work finishes normally, but the queue does not move
    await settle()
    assert not queued.done()
    box.tree.set_psi("memory", 0.0, 0.0)
    for _ in range(3):  # calm_samples = 3 before the level drops
        box.resample()
        c.on_snapshot(box.snapshot)
    assert box.snapshot.level.label == "ok"  # (a fresh read: mypy narrowed .level above)
    (await asyncio.wait_for(queued, 1)).release()
    assert_idle(c)


async def test_raising_max_active_admits_waiters() -> None:
    c = controller(max_active=1)
    holder = await c.acquire(cost_bytes=1)
    waiter = asyncio.create_task(c.acquire(cost_bytes=1))
    await settle()
    c.set_max_active(2)
    ticket: Ticket = await asyncio.wait_for(waiter, 1)
    assert c.stats.active == 2
    ticket.release()
    holder.release()
    with pytest.raises(ValueError, match="max_active"):
        c.set_max_active(0)
