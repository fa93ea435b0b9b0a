"""Real memory pressure: a child process allocates until the live monitor's level rises;
admission then refuses a large request while still admitting a small one.

Bounded so the box is never endangered: thresholds are set relative to the MemAvailable
measured at the start, the child allocates at most ``CAP`` (also enforced by RLIMIT_AS in the
child), stops on its own if MemAvailable ever falls under ``FLOOR``, and is killed at the end.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import warnings
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from edge_agent.errors import ResourceExhausted
from edge_agent.pressure import (
    AdmissionConfig,
    AdmissionController,
    PressureConfig,
    PressureLevel,
    PressureMonitor,
    PressureSnapshot,
    SignalThreshold,
)
from edge_agent.pressure._procfs import parse_meminfo, read_small

MIB = 1024**2
GIB = 1024**3
CHUNK = 128 * MIB
CAP = 3 * GIB  # the most the child may hold
FLOOR = 3 * GIB  # the child stops allocating if MemAvailable ever gets this low
RISE = 3 * GIB // 2  # the level rises once MemAvailable fell this far below the start
EXTRA = 512 * MIB  # allocated beyond the rise, so others' noise cannot undo it

CHILD = textwrap.dedent(
    f"""
    import resource, sys
    cap = {CAP}
    resource.setrlimit(resource.RLIMIT_AS, (cap + 2 * {GIB}, cap + 2 * {GIB}))
    held = []
    def available():
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
        return 0
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "grow":
            if len(held) * {CHUNK} + {CHUNK} > cap or available() < {FLOOR} + {CHUNK}:
                print("refused", flush=True)
                continue
            held.append(b"\\x01" * {CHUNK})  # bytes * n writes every page: really resident
            print("held", len(held) * {CHUNK}, flush=True)
        elif cmd == "free":
            held.clear()
            print("freed", flush=True)
        else:
            break
    """
)


class Hog:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.held = 0

    async def command(self, cmd: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        answer = line.decode().strip()
        if answer.startswith("held "):
            self.held = int(answer.split()[1])
        elif answer == "freed":
            self.held = 0
        return answer


@pytest.fixture
async def hog() -> AsyncIterator[Hog]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield Hog(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def mem_available() -> int:
    text = read_small("/proc/meminfo")
    assert text is not None
    return parse_meminfo(text)["MemAvailable"]


async def wait_level(
    monitor: PressureMonitor, level: PressureLevel, samples: int = 40
) -> PressureSnapshot:
    snap = monitor.snapshot
    assert snap is not None
    for _ in range(samples):
        if snap.level is level:
            return snap
        snap = await asyncio.wait_for(monitor.wait_next(), 5)
    raise AssertionError(f"level stayed {snap.level.label}: {snap.reasons}")


async def test_child_allocation_raises_level_and_admission_refuses_large(hog: Hog) -> None:
    start = mem_available()
    if start < FLOOR + CAP + 2 * GIB:
        pytest.skip("not enough free memory to make safe, real pressure here")
    # Thresholds relative to now: elevated once ~1 GiB is gone, critical well beyond the cap
    # (only the elevated level is the subject here; critical would refuse everything).
    base = PressureConfig()
    # Only the memory signal: CPU and I/O pressure from other work on this box must not
    # decide the outcome.
    thresholds = {name: replace(t, enabled=False) for name, t in base.thresholds.items()}
    thresholds["memory.available_bytes"] = SignalThreshold(
        elevated=float(start - RISE),
        critical=float(start - CAP - 2 * GIB),
        # Leaves elevated 64 MiB above where it entered: on a shared VM MemAvailable after
        # the child frees can stay well below the start (seen: 541 MB, then 0.84 GB in a CI
        # run), which an exit nearer the start mistook for pressure that never ended.
        elevated_exit=float(start - RISE + 64 * MIB),
        critical_exit=float(start - CAP - GIB),
    )
    config = replace(
        base,
        interval_s=0.1,
        calm_samples=2,
        thresholds=thresholds,
        admission=AdmissionConfig(memory_reserve_bytes=start - 2 * GIB - 256 * MIB),
    )
    monitor = PressureMonitor(config, temperatures=lambda: ())
    await monitor.start()
    controller = AdmissionController(
        config.admission, max_active=4, snapshot=lambda: monitor.snapshot
    )
    monitor.add_listener(controller.on_snapshot)
    large, small = int(1.5 * GIB), 64 * MIB
    try:
        assert (await wait_level(monitor, PressureLevel.OK)).level is PressureLevel.OK
        # Before the pressure: the same large request is admitted (the control case).
        async with controller.admit(cost_bytes=large):
            pass

        while True:
            answer = await hog.command("grow")
            assert answer.startswith("held"), f"child could not grow: {answer}"
            snap = await asyncio.wait_for(monitor.wait_next(), 5)
            snap = await asyncio.wait_for(monitor.wait_next(), 5)
            if snap.level >= PressureLevel.ELEVATED:
                break
        for _ in range(EXTRA // CHUNK):
            assert (await hog.command("grow")).startswith("held")
        snap = await asyncio.wait_for(monitor.wait_next(), 5)
        assert snap.level is PressureLevel.ELEVATED, snap.reasons
        assert len(snap.reasons) == 1
        assert snap.reasons[0].startswith("memory.available_bytes="), snap.reasons
        assert hog.held >= RISE // 2

        with pytest.raises(ResourceExhausted) as info:
            async with controller.admit(cost_bytes=large):
                pass
        assert info.value.retry_after_ms is not None
        async with controller.admit(cost_bytes=small) as ticket:
            assert ticket.cost_bytes == small
        assert controller.stats.refused_total == {"memory": 1}

        # The child frees. This VM's host can take memory back (virtio balloon), so after the
        # free MemAvailable may stay far under the start: seen 1.05 GB under it in a CI run,
        # below even the level's entry. The claim is that the level follows the real reading
        # with hysteresis: once MemAvailable is back over the exit for the calm samples the level
        # is OK and a large request fits; while it is not, the level must stay elevated.
        assert await hog.command("free") == "freed"
        exit_at = thresholds["memory.available_bytes"].elevated_exit
        assert exit_at is not None
        above = 0
        for _ in range(200):  # samples every 0.1 s: ~20 s for the memory to come back
            snap = await asyncio.wait_for(monitor.wait_next(), 5)
            assert snap.memory is not None
            above = above + 1 if snap.memory.available_bytes > exit_at else 0
            if above > config.calm_samples + 2:
                break
            if above == 0:
                assert snap.level is PressureLevel.ELEVATED, (snap.level, snap.reasons)
        else:
            warnings.warn(
                f"MemAvailable stayed under the exit ({mem_available()} <= {exit_at:.0f}) "
                "after the child freed: the host kept the memory; recovery not observed",
                stacklevel=1,
            )
            return
        assert snap.level is PressureLevel.OK, snap.reasons
        reserve = config.admission.memory_reserve_bytes
        fits = min(large, mem_available() - reserve - 128 * MIB)
        assert fits > 4 * small, "memory came back after the child freed"
        async with controller.admit(cost_bytes=fits):
            pass
    finally:
        await monitor.stop()
    stats = controller.stats
    assert (stats.active, stats.queued, stats.held_bytes) == (0, 0, 0)
