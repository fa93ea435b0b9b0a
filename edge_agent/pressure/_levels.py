"""From readings to a pressure level, with hysteresis; no I/O here.

Every signal has an *enter* threshold per level and a laxer *exit* threshold. A signal rises
to a level as soon as one sample reaches that level's enter threshold, and falls back only
after ``calm_samples`` consecutive samples beyond the exit threshold. The box's level is the
highest level of any signal. This keeps a level from flapping when a value hovers around a
threshold (PSI avg10 does exactly that under a steady load).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edge_agent.pressure._types import (
    AcceleratorMemory,
    EngineLoad,
    MemoryReading,
    PressureLevel,
    PsiReadings,
    Temperature,
)

__all__ = [
    "SIGNALS",
    "LevelTracker",
    "Signal",
    "SignalThreshold",
    "default_thresholds",
    "format_value",
    "signal_values",
]


@dataclass(frozen=True, slots=True)
class Signal:
    name: str  # dotted, used in reasons and metrics; config key is this with "_" for "."
    higher_is_worse: bool
    unit: str
    default_elevated: float | None
    default_critical: float | None
    help: str

    @property
    def config_key(self) -> str:
        return self.name.replace(".", "_")


_GIB = 1024**3

SIGNALS: tuple[Signal, ...] = (
    Signal("memory.psi_some_avg10", True, "%", 10.0, 40.0, "PSI memory some, avg10"),
    Signal("memory.psi_full_avg10", True, "%", 5.0, 20.0, "PSI memory full, avg10"),
    # The engine saturates the cores by design; CPU contention slows answers but never kills
    # the box, so by default it only raises "elevated" (which the router may use to escalate).
    Signal("cpu.psi_some_avg10", True, "%", 80.0, None, "PSI cpu some, avg10"),
    Signal("io.psi_full_avg10", True, "%", 20.0, 60.0, "PSI io full, avg10"),
    Signal("memory.available_fraction", False, "", 0.15, 0.05, "MemAvailable / MemTotal"),
    Signal("memory.available_bytes", False, "B", 1.0 * _GIB, 0.5 * _GIB, "MemAvailable"),
    # Swapped-out pages stay out long after the pressure passed; PSI catches real thrashing.
    Signal("swap.used_fraction", True, "", 0.6, None, "swap used / swap total"),
    Signal("temperature.max_celsius", True, "C", 85.0, 95.0, "hottest sensor"),
    Signal("accelerator.memory_free_fraction", False, "", 0.10, 0.03, "least free device memory"),
    Signal("engine.queue_depth", True, "", 4.0, None, "requests waiting for admission"),
    Signal("engine.kv_used_fraction", True, "", 0.90, None, "KV cache in use / capacity"),
)


@dataclass(frozen=True, slots=True)
class SignalThreshold:
    """Enter/exit thresholds of one signal; ``None`` disables that level for the signal."""

    elevated: float | None
    critical: float | None
    elevated_exit: float | None
    critical_exit: float | None
    enabled: bool = True

    def enter(self, level: PressureLevel) -> float | None:
        return self.critical if level is PressureLevel.CRITICAL else self.elevated

    def exit(self, level: PressureLevel) -> float | None:
        return self.critical_exit if level is PressureLevel.CRITICAL else self.elevated_exit


def derive_exit(signal: Signal, enter: float | None, hysteresis: float) -> float | None:
    """The default exit threshold: ``hysteresis`` (a fraction) on the calm side of enter."""
    if enter is None:
        return None
    return enter * (1.0 - hysteresis) if signal.higher_is_worse else enter * (1.0 + hysteresis)


def default_thresholds(hysteresis: float = 0.2) -> dict[str, SignalThreshold]:
    return {
        s.name: SignalThreshold(
            elevated=s.default_elevated,
            critical=s.default_critical,
            elevated_exit=derive_exit(s, s.default_elevated, hysteresis),
            critical_exit=derive_exit(s, s.default_critical, hysteresis),
        )
        for s in SIGNALS
    }


def signal_values(
    psi: PsiReadings,
    memory: MemoryReading | None,
    temperatures: tuple[Temperature, ...],
    accelerators: tuple[AcceleratorMemory, ...],
    engine: EngineLoad | None,
) -> dict[str, float | None]:
    """The value of every signal for one sample; ``None`` where the box cannot measure it."""
    mem_psi = psi.memory
    return {
        "memory.psi_some_avg10": None if mem_psi is None else mem_psi.some.avg10,
        "memory.psi_full_avg10": (
            None if mem_psi is None or mem_psi.full is None else mem_psi.full.avg10
        ),
        "cpu.psi_some_avg10": None if psi.cpu is None else psi.cpu.some.avg10,
        "io.psi_full_avg10": (None if psi.io is None or psi.io.full is None else psi.io.full.avg10),
        "memory.available_fraction": None if memory is None else memory.available_fraction,
        "memory.available_bytes": None if memory is None else float(memory.available_bytes),
        "swap.used_fraction": None if memory is None else memory.swap_used_fraction,
        "temperature.max_celsius": max((t.celsius for t in temperatures), default=None),
        "accelerator.memory_free_fraction": min(
            (a.free_fraction for a in accelerators), default=None
        ),
        "engine.queue_depth": None if engine is None else float(engine.queued_requests),
        "engine.kv_used_fraction": None if engine is None else engine.kv_used_fraction,
    }


def format_value(value: float) -> str:
    """Short and exact enough for a reason string: 12.3, 0.05, 1073741824."""
    if value == int(value) and abs(value) >= 1000:
        return str(int(value))
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


class LevelTracker:
    """Holds each signal's level between samples; ``update`` is deterministic in its inputs."""

    def __init__(self, thresholds: Mapping[str, SignalThreshold], calm_samples: int = 3) -> None:
        self._signals = [s for s in SIGNALS if s.name in thresholds]
        self._thresholds = dict(thresholds)
        self._calm_needed = max(1, calm_samples)
        self._level: dict[str, PressureLevel] = {s.name: PressureLevel.OK for s in SIGNALS}
        self._calm: dict[str, int] = {s.name: 0 for s in SIGNALS}

    def update(
        self, values: Mapping[str, float | None]
    ) -> tuple[PressureLevel, tuple[str, ...], tuple[tuple[str, PressureLevel], ...]]:
        """Feed one sample; returns (level, reasons, per-signal levels above ok)."""
        reasons: list[str] = []
        levels: list[tuple[str, PressureLevel]] = []
        overall = PressureLevel.OK
        for signal in self._signals:
            threshold = self._thresholds[signal.name]
            value = values.get(signal.name)
            if value is None or not threshold.enabled:
                # Unmeasured now: it cannot hold a level (a vanished sensor is not pressure).
                self._level[signal.name] = PressureLevel.OK
                self._calm[signal.name] = 0
                continue
            level, reason = self._step(signal, threshold, value)
            if level is not PressureLevel.OK:
                levels.append((signal.name, level))
                reasons.append(reason)
                overall = max(overall, level)
        return overall, tuple(reasons), tuple(levels)

    def _step(
        self, signal: Signal, threshold: SignalThreshold, value: float
    ) -> tuple[PressureLevel, str]:
        worse = signal.higher_is_worse
        op = ">=" if worse else "<="

        def beyond(limit: float | None) -> bool:
            if limit is None:
                return False
            return value >= limit if worse else value <= limit

        entered = PressureLevel.OK
        for candidate in (PressureLevel.CRITICAL, PressureLevel.ELEVATED):
            if beyond(threshold.enter(candidate)):
                entered = candidate
                break
        current = self._level[signal.name]
        if entered >= current:
            self._level[signal.name] = entered
            self._calm[signal.name] = 0
        else:
            # Below the current level's enter threshold: the highest level whose (laxer) exit
            # threshold the value still reaches keeps holding.
            held = entered
            for candidate in (PressureLevel.CRITICAL, PressureLevel.ELEVATED):
                if entered < candidate <= current and beyond(threshold.exit(candidate)):
                    held = candidate
                    break
            if held >= current:
                self._calm[signal.name] = 0
            else:
                self._calm[signal.name] += 1
                if self._calm[signal.name] >= self._calm_needed:
                    self._level[signal.name] = held
                    self._calm[signal.name] = 0
        level = self._level[signal.name]
        limit = threshold.enter(level)
        if level is PressureLevel.OK or limit is None:
            return level, ""
        text = f"{signal.name}={format_value(value)}"
        if level > entered:
            # Held by hysteresis: still reported with the threshold that raised it.
            return level, f"{text};held{op}{format_value(limit)}"
        return level, f"{text}{op}{format_value(limit)}"
