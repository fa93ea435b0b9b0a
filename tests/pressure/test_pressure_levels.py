"""Thresholds, hysteresis and reasons on recorded PSI samples; the [pressure] config section."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pressure_support import FIXTURES

from edge_agent._tomlreader import TableReader
from edge_agent.errors import ConfigError
from edge_agent.pressure import (
    EngineLoad,
    LevelTracker,
    PressureConfig,
    PressureLevel,
    SignalThreshold,
    parse_pressure_config,
)
from edge_agent.pressure._levels import default_thresholds, signal_values
from edge_agent.pressure._procfs import parse_psi, read_memory, read_psi
from edge_agent.pressure._types import PsiReadings, PsiResource

OK, EL, CR = PressureLevel.OK, PressureLevel.ELEVATED, PressureLevel.CRITICAL


def recorded_cpu_series() -> list[PsiResource]:
    text = (FIXTURES / "series_cpu_2core.txt").read_text()
    blocks = [b for b in text.split("---\n") if "some" in b]
    out = []
    for block in blocks:
        resource = parse_psi(block)
        assert resource is not None
        out.append(resource)
    return out


def cpu_only(enter_el: float, enter_cr: float, exit_el: float, exit_cr: float) -> dict[str, Any]:
    return {
        "cpu.psi_some_avg10": SignalThreshold(
            elevated=enter_el, critical=enter_cr, elevated_exit=exit_el, critical_exit=exit_cr
        )
    }


def run_series(tracker: LevelTracker) -> list[PressureLevel]:
    levels = []
    for cpu in recorded_cpu_series():
        values = signal_values(PsiReadings(cpu=cpu), None, (), (), None)
        level, _, _ = tracker.update(values)
        levels.append(level)
    return levels


def test_recorded_series_with_hysteresis() -> None:
    # The series climbs 21 → 78, decays to 28 and climbs again to 64 (see the fixture).
    tracker = LevelTracker(cpu_only(40, 70, 32, 56), calm_samples=3)
    levels = run_series(tracker)
    assert len(levels) == 60
    expected = (
        [OK] * 4  # 21.4, 21.4, 31.8, 31.8
        + [EL] * 8  # 41.8 ... 67.6: elevated at once
        + [CR] * 18  # 73.3 rises to critical; 74.5 ... 57.3 stay above the 56 exit
        + [CR] * 2  # 45.6, 41.5: below the critical exit, calm samples 1 and 2
        + [EL] * 5  # third calm sample drops one level; 38.1 ... 36.7 stay above 32
        + [EL] * 2  # 31.1, 31.1: below the elevated exit, calm 1 and 2
        + [OK] * 6  # 28.0 (calm 3) ... 39.3: below the enter threshold 40
        + [EL] * 15  # 49.6 ... 54.6
    )
    assert levels == expected


def test_same_series_without_hysteresis_leaves_critical_at_once() -> None:
    with_h = run_series(LevelTracker(cpu_only(40, 70, 32, 56), calm_samples=3))
    without = run_series(LevelTracker(cpu_only(40, 70, 40, 70), calm_samples=1))
    assert without.count(CR) == 6  # only the six samples at or above 70
    assert with_h.count(CR) == 20


def test_value_hovering_at_a_threshold_does_not_flap() -> None:
    # memory full avg10 hovering around the 5 % enter threshold, as PSI does under a steady
    # load; each sample is a /proc/pressure/memory file as the kernel prints it.
    hovering = [4.1, 5.3, 4.8, 5.1, 4.6, 5.4, 4.9, 4.7, 5.2, 4.4, 3.2, 3.1, 2.9, 3.0]
    samples = [
        parse_psi(
            f"some avg10={v * 2:.2f} avg60=1.00 avg300=0.50 total={i * 1000}\n"
            f"full avg10={v:.2f} avg60=0.80 avg300=0.40 total={i * 500}\n"
        )
        for i, v in enumerate(hovering)
    ]
    only_full = {"memory.psi_full_avg10": default_thresholds()["memory.psi_full_avg10"]}

    def levels(calm: int) -> list[PressureLevel]:
        tracker = LevelTracker(only_full, calm_samples=calm)
        return [
            tracker.update(signal_values(PsiReadings(memory=m), None, (), (), None))[0]
            for m in samples
        ]

    no_hysteresis = LevelTracker(
        {"memory.psi_full_avg10": SignalThreshold(5.0, 20.0, 5.0, 20.0)}, calm_samples=1
    )
    flapping = [
        no_hysteresis.update(signal_values(PsiReadings(memory=m), None, (), (), None))[0]
        for m in samples
    ]
    assert flapping[:10] == [OK, EL, OK, EL, OK, EL, OK, OK, EL, OK]
    # Exit at 4.0 (20 % below 5): elevated from 5.3 until three samples below 4.0.
    assert levels(3) == [OK] + [EL] * 11 + [OK] * 2


def test_reasons_name_signal_value_and_threshold() -> None:
    tracker = LevelTracker(default_thresholds(), calm_samples=2)
    psi = read_psi(str(FIXTURES / "kernel_5_4"))
    memory = read_memory(str(FIXTURES / "kernel_5_4"), None)
    values = signal_values(psi, memory, (), (), EngineLoad(queued_requests=5))
    level, reasons, per_signal = tracker.update(values)
    assert level is EL
    assert set(reasons) == {
        "memory.psi_some_avg10=23.5>=10",
        "memory.psi_full_avg10=11.2>=5",
        "memory.available_fraction=0.096<=0.15",
        "swap.used_fraction=0.75>=0.6",
        "engine.queue_depth=5>=4",
    }
    assert dict(per_signal)["memory.psi_full_avg10"] is EL
    # Held by hysteresis: the reason says so and keeps the threshold that raised it.
    values["memory.psi_full_avg10"] = 4.5
    _, reasons, _ = tracker.update(values)
    assert "memory.psi_full_avg10=4.5;held>=5" in reasons


def test_lower_is_worse_signals_and_critical() -> None:
    gib = 1024**3
    tracker = LevelTracker(default_thresholds(), calm_samples=1)
    values: dict[str, float | None] = {
        "memory.available_bytes": 0.4 * gib,
        "memory.available_fraction": 0.2,
    }
    level, reasons, _ = tracker.update(values)
    assert level is CR
    assert reasons == ("memory.available_bytes=429496729.6<=536870912",)
    # 0.55 GiB is above the critical enter (0.5 GiB) but not above its exit (0.6 GiB).
    values["memory.available_bytes"] = 0.55 * gib
    assert tracker.update(values)[0] is CR
    values["memory.available_bytes"] = 0.61 * gib
    assert tracker.update(values)[0] is EL  # one calm sample is enough here
    values["memory.available_bytes"] = 2.0 * gib
    assert tracker.update(values)[0] is OK


def test_vanished_sensor_releases_its_level() -> None:
    tracker = LevelTracker(default_thresholds(), calm_samples=5)
    assert tracker.update({"temperature.max_celsius": 97.0})[0] is CR
    assert tracker.update({"temperature.max_celsius": None})[0] is OK


def test_disabled_signal_and_disabled_level() -> None:
    thresholds = default_thresholds()
    thresholds["temperature.max_celsius"] = SignalThreshold(90, 95, 80, 90, enabled=False)
    thresholds["cpu.psi_some_avg10"] = SignalThreshold(80, None, 64, None)
    tracker = LevelTracker(thresholds)
    level, reasons, _ = tracker.update(
        {"temperature.max_celsius": 120.0, "cpu.psi_some_avg10": 100.0}
    )
    assert level is EL
    assert reasons == ("cpu.psi_some_avg10=100>=80",)


def _parse(text: str) -> PressureConfig:
    return parse_pressure_config(TableReader(tomllib.loads(text), source="agent.toml"))


def test_config_defaults_from_empty_section() -> None:
    config = _parse("")
    assert config == PressureConfig()
    t = config.thresholds["memory.psi_full_avg10"]
    assert (t.elevated, t.critical) == (5.0, 20.0)
    assert t.elevated_exit == pytest.approx(4.0)
    assert t.critical_exit == pytest.approx(16.0)
    assert config.thresholds["cpu.psi_some_avg10"].critical is None


def test_config_overrides_and_derived_exits() -> None:
    config = _parse(
        """
        interval_s = 0.5
        hysteresis = 0.5
        calm_samples = 4
        memory_reserve_mib = 2048
        max_queue = 8
        max_queue_wait_s = 5
        proc_root = "/host/proc/"
        [thresholds.memory_available_fraction]
        elevated = 0.2
        critical = 0.1
        critical_exit = 0.12
        [thresholds.engine_queue_depth]
        critical = 10
        [thresholds.temperature_max_celsius]
        critical = false
        """
    )
    assert config.interval_s == 0.5
    assert config.calm_samples == 4
    assert config.proc_root == "/host/proc"
    assert config.admission.memory_reserve_bytes == 2048 * 1024 * 1024
    assert config.admission.max_queue == 8
    assert config.admission.max_queue_wait_s == 5.0
    mem = config.thresholds["memory.available_fraction"]
    assert mem.elevated_exit == pytest.approx(0.3)
    assert mem.critical_exit == pytest.approx(0.12)
    assert config.thresholds["engine.queue_depth"].critical == 10.0
    assert config.thresholds["temperature.max_celsius"].critical is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("intervl_s = 1", "unknown key 'intervl_s'"),
        ("[thresholds.memory_psi_full_avg10]\nelevatd = 1", "thresholds.memory_psi_full_avg10"),
        ("[thresholds.no_such_signal]\nelevated = 1", "unknown key 'thresholds.no_such_signal'"),
        ("[thresholds.memory_psi_full_avg10]\nelevated = 30", "must be at or above elevated"),
        ("[thresholds.memory_available_fraction]\nelevated = 0.01", "at or below elevated"),
        ("[thresholds.io_psi_full_avg10]\nelevated_exit = 25", "elevated_exit"),
        ("[thresholds.io_psi_full_avg10]\ncritical = true", "expected a number or false"),
        ("interval_s = 0", "interval_s: must be >="),
        ("proc_root = 'proc'", "absolute path"),
        ("retry_after_min_ms = 10\nretry_after_max_ms = 5", "retry_after_max_ms"),
    ],
)
def test_config_errors_name_the_key(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(text)
    assert fragment in str(info.value)
    assert str(info.value).startswith("agent.toml: ")


def test_fixture_files_are_the_kernel_format(tmp_path: Path) -> None:
    # Guard against a fixture edited into something the kernel would never print.
    for kernel in ("kernel_6_x", "kernel_5_4"):
        for name in ("cpu", "memory", "io"):
            text = (FIXTURES / kernel / "pressure" / name).read_text()
            for line in text.splitlines():
                kind, *fields = line.split()
                assert kind in ("some", "full")
                assert [f.split("=")[0] for f in fields] == ["avg10", "avg60", "avg300", "total"]


@given(
    values=st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=60),
    calm=st.integers(min_value=1, max_value=4),
)
def test_tracker_invariants(values: list[float], calm: int) -> None:
    threshold = SignalThreshold(elevated=40, critical=70, elevated_exit=32, critical_exit=56)
    tracker = LevelTracker({"cpu.psi_some_avg10": threshold}, calm_samples=calm)
    previous = OK
    below_exit = 0
    for v in values:
        level, reasons, _ = tracker.update({"cpu.psi_some_avg10": v})
        entered = CR if v >= 70 else EL if v >= 40 else OK
        # Never below what the value itself demands.
        assert level >= entered
        exit_of_previous = {CR: 56, EL: 32, OK: -1}[previous]
        below_exit = below_exit + 1 if v < exit_of_previous else 0
        if level < previous:
            assert below_exit >= calm  # dropped only after enough calm samples
            below_exit = 0
        assert (level is OK) == (reasons == ())
        previous = level
