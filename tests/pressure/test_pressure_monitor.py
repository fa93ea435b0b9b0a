"""The monitor on a timer: snapshots, listeners, levels moving with the files, stop."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from pressure_support import make_proc_tree

from edge_agent.pressure import (
    EngineLoad,
    PressureConfig,
    PressureLevel,
    PressureMonitor,
    PressureSnapshot,
    Sampler,
    Temperature,
)
from edge_agent.pressure._sensors import NvmlMemory, read_temperatures


def fixture_config(tmp_path: Path, **kw: object) -> tuple[PressureConfig, Path]:
    tree = make_proc_tree(tmp_path)
    config = PressureConfig(
        proc_root=str(tree.root),
        cgroup_root=str(tmp_path / "no-cgroup"),
        nvml=False,
        interval_s=0.05,
        calm_samples=1,
        **kw,  # type: ignore[arg-type]
    )
    return config, tree.root


async def test_monitor_publishes_and_levels_follow_the_files(tmp_path: Path) -> None:
    config, root = fixture_config(tmp_path)
    load = EngineLoad(active_requests=2, queued_requests=1, kv_bytes_in_use=10)
    monitor = PressureMonitor(config, lambda: load, temperatures=lambda: ())
    seen: list[PressureSnapshot] = []
    remove = monitor.add_listener(seen.append)
    assert monitor.snapshot is None
    await monitor.start()
    try:
        first = monitor.snapshot
        assert first is not None
        assert first.sequence == 1
        assert first.level is PressureLevel.OK
        assert first.engine == load
        assert first.memory is not None
        assert first.memory.total_bytes == 24683656 * 1024  # the recorded meminfo
        nxt = await asyncio.wait_for(monitor.wait_next(), 2)
        assert nxt.sequence > first.sequence
        (root / "pressure" / "memory").write_text(
            "some avg10=31.00 avg60=10.00 avg300=3.00 total=123456\n"
            "full avg10=12.30 avg60=4.00 avg300=1.00 total=65432\n"
        )
        snap = await asyncio.wait_for(monitor.wait_next(), 2)
        assert snap.level is PressureLevel.ELEVATED
        assert "memory.psi_full_avg10=12.3>=5" in snap.reasons
        assert "memory.psi_some_avg10=31>=10" in snap.reasons
        (root / "pressure" / "memory").unlink()  # PSI gone (as on a kernel without it)
        snap = await asyncio.wait_for(monitor.wait_next(), 2)
        assert snap.psi.memory is None
        assert snap.level is PressureLevel.OK
        remove()
        count = len(seen)
        await monitor.wait_next()
        assert len(seen) == count
        assert [s.sequence for s in seen] == sorted({s.sequence for s in seen})
    finally:
        await monitor.stop()
    assert not monitor.running


async def test_a_failing_engine_callback_or_listener_does_not_stop_sampling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, _ = fixture_config(tmp_path)

    def broken() -> EngineLoad:
        raise RuntimeError("engine pipe closed")

    def bad_listener(_: PressureSnapshot) -> None:
        raise ValueError("listener bug")

    monitor = PressureMonitor(config, broken, temperatures=lambda: ())
    monitor.add_listener(bad_listener)
    await monitor.start()
    try:
        snap = await asyncio.wait_for(monitor.wait_next(), 2)
        snap = await asyncio.wait_for(monitor.wait_next(), 2)
        assert snap.engine is None
        assert snap.sequence >= 3
    finally:
        await monitor.stop()
    assert "engine load callback failed" in caplog.text
    assert "pressure listener failed" in caplog.text


def test_temperature_signal_and_its_sampling_interval(tmp_path: Path) -> None:
    config, _ = fixture_config(tmp_path, temperature_interval_s=3600.0)
    calls: list[float] = []

    def sensors() -> tuple[Temperature, ...]:
        # Stands in for hwmon, which this VM does not have (psutil reports no sensors here).
        calls.append(time.monotonic())
        return (Temperature("coretemp/Package id 0", 97.0), Temperature("nvme/Composite", 41.0))

    sampler = Sampler(config, temperatures=sensors)
    snap = sampler.sample()
    assert snap.max_temperature_c == 97.0
    assert snap.level is PressureLevel.CRITICAL
    assert snap.reasons == ("temperature.max_celsius=97>=95",)
    sampler.sample()
    assert len(calls) == 1  # read again only after temperature_interval_s


def test_real_box_sample() -> None:
    sampler = Sampler(PressureConfig())
    sampler.sample()
    time.sleep(0.05)
    snap = sampler.sample()
    assert snap.memory is not None
    assert 0 < snap.memory.available_bytes <= snap.memory.total_bytes
    if os.path.exists("/proc/pressure/memory"):
        assert snap.psi.memory is not None
    assert snap.cpu_percent is None or 0.0 <= snap.cpu_percent <= 100.0
    assert isinstance(read_temperatures(), tuple)
    sampler.close()


def test_accelerator_memory_only_where_nvml_initialises() -> None:
    nvml = NvmlMemory()
    if nvml.open():
        try:
            devices = nvml.read()
            assert devices
            for d in devices:
                assert 0 <= d.free_bytes <= d.total_bytes
                assert d.name
        finally:
            nvml.close()
        assert not nvml.available
    else:
        assert nvml.read() == ()  # nothing invented without a driver
    sampler = Sampler(PressureConfig(nvml=True))
    try:
        snap = sampler.sample()
        assert bool(snap.accelerators) == sampler.has_accelerator_memory
    finally:
        sampler.close()
