"""The pressure monitor: a timer that samples the box and publishes immutable snapshots.

``Sampler`` does one synchronous sample (seven small file reads plus the level tracking, about
a quarter of a millisecond on a 2-core box; see docs/BENCHMARKS.md) and is what tests and the
benchmark drive directly. ``PressureMonitor`` runs it on the event loop every ``interval_s``
and tells listeners about each snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from edge_agent.pressure._config import PressureConfig
from edge_agent.pressure._levels import LevelTracker, signal_values
from edge_agent.pressure._procfs import (
    CgroupMemory,
    CpuTimes,
    cpu_percent_between,
    find_cgroup_memory,
    read_cpu_times,
    read_memory,
    read_psi,
)
from edge_agent.pressure._sensors import NvmlMemory, read_temperatures
from edge_agent.pressure._types import EngineLoad, PressureSnapshot, Temperature

__all__ = ["PressureMonitor", "Sampler"]

_log = logging.getLogger(__name__)

Listener = Callable[[PressureSnapshot], None]


class Sampler:
    """Takes one sample per call and runs it through the level tracker."""

    def __init__(
        self,
        config: PressureConfig,
        engine_load: Callable[[], EngineLoad] | None = None,
        *,
        temperatures: Callable[[], tuple[Temperature, ...]] = read_temperatures,
    ) -> None:
        self._config = config
        self._engine_load = engine_load
        self._read_temperatures = temperatures
        self._tracker = LevelTracker(config.thresholds, config.calm_samples)
        self._nvml = NvmlMemory()
        self._cgroup: CgroupMemory | None = None
        self._cpu_before: CpuTimes | None = None
        self._temperatures: tuple[Temperature, ...] = ()
        self._temperatures_at: float | None = None
        self._sequence = 0
        self._opened = False

    def open(self) -> None:
        """Resolve what is there to read (cgroup, NVML) once, not on every sample."""
        if self._opened:
            return
        self._opened = True
        self._cgroup = find_cgroup_memory(self._config.proc_root, self._config.cgroup_root)
        if self._config.nvml:
            self._nvml.open()
        self._cpu_before = read_cpu_times(self._config.proc_root)

    def close(self) -> None:
        self._nvml.close()
        self._opened = False

    @property
    def has_accelerator_memory(self) -> bool:
        return self._nvml.available

    def _engine(self) -> EngineLoad | None:
        if self._engine_load is None:
            return None
        try:
            return self._engine_load()
        except Exception:
            # The engine's figures are optional for a sample; the box's own are not.
            _log.exception("engine load callback failed")
            return None

    def _temps(self, now: float) -> tuple[Temperature, ...]:
        every = self._config.temperature_interval_s
        if self._temperatures_at is None or now - self._temperatures_at >= every:
            self._temperatures = self._read_temperatures()
            self._temperatures_at = now
        return self._temperatures

    def sample(self) -> PressureSnapshot:
        if not self._opened:
            self.open()
        root = self._config.proc_root
        now = time.monotonic()
        psi = read_psi(root)
        memory = read_memory(root, self._cgroup)
        cpu_now = read_cpu_times(root)
        cpu_percent = None
        if cpu_now is not None and self._cpu_before is not None:
            cpu_percent = cpu_percent_between(self._cpu_before, cpu_now)
        if cpu_now is not None:
            self._cpu_before = cpu_now
        temperatures = self._temps(now)
        accelerators = self._nvml.read()
        engine = self._engine()
        values = signal_values(psi, memory, temperatures, accelerators, engine)
        level, reasons, signal_levels = self._tracker.update(values)
        self._sequence += 1
        return PressureSnapshot(
            taken_at=now,
            wall_time=time.time(),
            sequence=self._sequence,
            level=level,
            reasons=reasons,
            signal_levels=signal_levels,
            psi=psi,
            memory=memory,
            cpu_percent=cpu_percent,
            temperatures=temperatures,
            accelerators=accelerators,
            engine=engine,
        )


class PressureMonitor:
    """Samples every ``config.interval_s`` on the running loop; ``snapshot`` is the latest."""

    def __init__(
        self,
        config: PressureConfig,
        engine_load: Callable[[], EngineLoad] | None = None,
        *,
        temperatures: Callable[[], tuple[Temperature, ...]] = read_temperatures,
    ) -> None:
        self._config = config
        self._sampler = Sampler(config, engine_load, temperatures=temperatures)
        self._snapshot: PressureSnapshot | None = None
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._published = asyncio.Event()

    @property
    def snapshot(self) -> PressureSnapshot | None:
        """The latest snapshot (``None`` only before ``start``)."""
        return self._snapshot

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every new snapshot (on the loop); returns a remover."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def sample_now(self) -> PressureSnapshot:
        """Take and publish a sample at once (after an event that cannot wait a tick)."""
        snapshot = self._sampler.sample()
        self._publish(snapshot)
        return snapshot

    async def wait_next(self, after_sequence: int | None = None) -> PressureSnapshot:
        """Wait for a snapshot newer than ``after_sequence`` (default: the current one)."""
        current = self._snapshot
        floor = after_sequence
        if floor is None and current is not None:
            floor = current.sequence
        while True:
            snapshot = self._snapshot
            if snapshot is not None and (floor is None or snapshot.sequence > floor):
                return snapshot
            self._published.clear()
            await self._published.wait()

    def _publish(self, snapshot: PressureSnapshot) -> None:
        self._snapshot = snapshot
        self._published.set()
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:
                _log.exception("pressure listener failed")

    async def start(self) -> None:
        if self.running:
            return
        self._sampler.open()
        self.sample_now()
        self._task = asyncio.create_task(self._run(), name="pressure-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sampler.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._config.interval_s
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                self.sample_now()
            except Exception:
                # A broken sample must not end monitoring; the previous snapshot stays.
                _log.exception("pressure sample failed")
            next_at += interval
            now = loop.time()
            if next_at < now:  # fell behind (suspended box, blocked loop): do not burst
                next_at = now + interval
