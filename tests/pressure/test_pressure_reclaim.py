"""Admission and the engine's idle cached KV (prefix reuse): room it can take back on demand,
asked for before a request that needs it is admitted, and given up under memory pressure."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pressure_support import Box

from edge_agent.pressure import AdmissionConfig, AdmissionController, EngineLoad

GIB = 1024**3


class Engine:
    """The supervisor's side: cached KV it frees when asked, as EngineSupervisor.reclaim."""

    def __init__(self, box: Box, cached: int) -> None:
        self.box = box
        self.cached = cached
        self.asked: list[int] = []
        box.engine = EngineLoad(kv_bytes_reclaimable=cached)
        box.resample()

    def reclaim(self, nbytes: int) -> int:
        self.asked.append(nbytes)
        freed = self.cached if nbytes < 0 else min(nbytes, self.cached)
        self.cached -= freed
        return freed


def _controller(box: Box, engine: Engine | None) -> AdmissionController:
    return AdmissionController(
        AdmissionConfig(memory_reserve_bytes=1 * GIB),
        max_active=8,
        snapshot=lambda: box.snapshot,
        reclaim=engine.reclaim if engine is not None else None,
    )


async def test_a_request_is_admitted_on_cached_kv_and_the_engine_is_asked_for_it(
    tmp_path: Path,
) -> None:
    box = Box(tmp_path, total=16 * GIB, available=5 * GIB)
    engine = Engine(box, cached=6 * GIB)
    c = _controller(box, engine)
    # 4 GiB of room without the cache: the first request needs no eviction.
    a = await c.acquire(cost_bytes=3 * GIB)
    assert engine.asked == []
    # The next does: it is admitted, and exactly the missing room is asked back first.
    b = await c.acquire(cost_bytes=3 * GIB)
    assert engine.asked == [2 * GIB]
    # The same (stale) sample must not let the freed bytes count twice: a third request
    # that fits only in what is still cached asks for that part only.
    d = await c.acquire(cost_bytes=3 * GIB)
    assert engine.asked == [2 * GIB, 3 * GIB]
    assert c.room_bytes() == 5 * GIB - 1 * GIB + 6 * GIB - 9 * GIB
    # Beyond the cache: it waits, and asks for nothing the engine does not hold.
    waiting = asyncio.create_task(c.acquire(cost_bytes=2 * GIB))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done() and c.stats.queued == 1
    a.release()
    (await asyncio.wait_for(waiting, 1)).release()
    assert engine.asked == [2 * GIB, 3 * GIB]  # the room a release gave back sufficed
    for ticket in (b, d):
        ticket.release()


async def test_without_a_reclaim_hook_cached_kv_is_no_room(tmp_path: Path) -> None:
    box = Box(tmp_path, total=16 * GIB, available=3 * GIB)
    box.engine = EngineLoad(kv_bytes_reclaimable=6 * GIB)
    box.resample()
    c = _controller(box, None)
    assert c.room_bytes() == 8 * GIB  # the room is there, but nobody can free it...
    engine = Engine(box, cached=6 * GIB)
    c = _controller(box, engine)
    (await c.acquire(cost_bytes=5 * GIB)).release()  # ...with the hook it is asked back
    assert engine.asked == [3 * GIB]


async def test_memory_pressure_frees_the_whole_cache_and_cpu_pressure_does_not(
    tmp_path: Path,
) -> None:
    box = Box(tmp_path, total=16 * GIB, available=8 * GIB)
    engine = Engine(box, cached=2 * GIB)
    c = _controller(box, engine)
    box.tree.set_psi("cpu", 95.0)  # the engine saturating the cores: elevated, not memory
    box.resample()
    assert box.snapshot.level.label == "elevated"
    c.on_snapshot(box.snapshot)
    assert engine.asked == []  # evicting would only add prefill work to a busy CPU
    box.tree.set_psi("cpu", 0.0)
    box.tree.set_memory(total=16 * GIB, available=int(0.8 * GIB))
    box.resample()
    c.on_snapshot(box.snapshot)
    assert engine.asked == [-1] and engine.cached == 0
