"""The ``[pressure]`` config section: sampling, thresholds, hysteresis and admission limits.

An empty section gives the defaults documented in docs/PRESSURE.md. Thresholds live in
``[pressure.thresholds.<signal>]`` tables (signal names with ``_`` for ``.``), each with
``elevated``, ``critical`` (a number, or ``false`` to disable that level), optional
``elevated_exit`` / ``critical_exit`` and ``enabled``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edge_agent._tomlreader import TableReader
from edge_agent.pressure._levels import (
    SIGNALS,
    Signal,
    SignalThreshold,
    default_thresholds,
    derive_exit,
)

__all__ = ["AdmissionConfig", "PressureConfig", "parse_pressure_config"]

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """How the admission controller budgets memory and queues work."""

    # Memory never handed to requests: the OS, the daemon, page cache for the mmapped model.
    memory_reserve_bytes: int = 1024 * _MIB
    # Fixed cost per request on top of its KV cache (logits, sampling and I/O buffers).
    request_overhead_bytes: int = 16 * _MIB
    max_queue: int = 32
    max_queue_wait_s: float = 30.0
    # Under critical pressure new local work is refused (or escalated by the caller).
    refuse_when_critical: bool = True
    retry_after_default_ms: int = 1000
    retry_after_min_ms: int = 100
    retry_after_max_ms: int = 60_000


def _default_thresholds() -> Mapping[str, SignalThreshold]:
    return MappingProxyType(default_thresholds(0.2))


@dataclass(frozen=True, slots=True)
class PressureConfig:
    interval_s: float = 1.0
    # Roots are configurable so tests (and containers) can point at recorded files.
    proc_root: str = "/proc"
    cgroup_root: str = "/sys/fs/cgroup"
    # hwmon reads are the costliest part of a sample and temperatures move slowly.
    temperature_interval_s: float = 5.0
    nvml: bool = True
    hysteresis: float = 0.2
    calm_samples: int = 3
    thresholds: Mapping[str, SignalThreshold] = field(default_factory=_default_thresholds)
    admission: AdmissionConfig = AdmissionConfig()


def _optional_threshold(reader: TableReader, name: str, default: float | None) -> float | None:
    """A number, or ``false`` to switch this level off for the signal."""
    raw = reader.raw(name, default)
    if raw is None:
        return None
    if raw is False:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise reader.error(name, "expected a number or false")
    value = float(raw)
    if math.isnan(value) or value < 0:
        raise reader.error(name, f"must be a non-negative number, got {raw}")
    return value


def _parse_signal(reader: TableReader, signal: Signal, hysteresis: float) -> SignalThreshold:
    enabled = reader.boolean("enabled", True)
    elevated = _optional_threshold(reader, "elevated", signal.default_elevated)
    critical = _optional_threshold(reader, "critical", signal.default_critical)
    elevated_exit = _optional_threshold(reader, "elevated_exit", None)
    critical_exit = _optional_threshold(reader, "critical_exit", None)
    if elevated_exit is None:
        elevated_exit = derive_exit(signal, elevated, hysteresis)
    if critical_exit is None:
        critical_exit = derive_exit(signal, critical, hysteresis)

    def worse_or_equal(a: float, b: float) -> bool:
        return a >= b if signal.higher_is_worse else a <= b

    direction = "above" if signal.higher_is_worse else "below"
    if elevated is not None and critical is not None and not worse_or_equal(critical, elevated):
        raise reader.error("critical", f"must be at or {direction} elevated ({elevated})")
    for enter, exit_, key in (
        (elevated, elevated_exit, "elevated_exit"),
        (critical, critical_exit, "critical_exit"),
    ):
        if enter is not None and exit_ is not None and not worse_or_equal(enter, exit_):
            side = "at or below" if signal.higher_is_worse else "at or above"
            raise reader.error(key, f"must be {side} the enter threshold ({enter})")
    reader.finish()
    return SignalThreshold(
        elevated=elevated,
        critical=critical,
        elevated_exit=elevated_exit,
        critical_exit=critical_exit,
        enabled=enabled,
    )


def _parse_admission(reader: TableReader) -> AdmissionConfig:
    d = AdmissionConfig()
    min_ms = reader.integer("retry_after_min_ms", d.retry_after_min_ms, min_value=0)
    max_ms = reader.integer("retry_after_max_ms", d.retry_after_max_ms, min_value=1)
    if max_ms < min_ms:
        raise reader.error("retry_after_max_ms", "must be >= retry_after_min_ms")
    return AdmissionConfig(
        memory_reserve_bytes=reader.integer(
            "memory_reserve_mib", d.memory_reserve_bytes // _MIB, min_value=0
        )
        * _MIB,
        request_overhead_bytes=reader.integer(
            "request_overhead_mib", d.request_overhead_bytes // _MIB, min_value=0
        )
        * _MIB,
        max_queue=reader.integer("max_queue", d.max_queue, min_value=0, max_value=100_000),
        max_queue_wait_s=reader.number(
            "max_queue_wait_s", d.max_queue_wait_s, min_value=0.0, max_value=86_400.0
        ),
        refuse_when_critical=reader.boolean("refuse_when_critical", d.refuse_when_critical),
        retry_after_default_ms=reader.integer(
            "retry_after_default_ms", d.retry_after_default_ms, min_value=min_ms, max_value=max_ms
        ),
        retry_after_min_ms=min_ms,
        retry_after_max_ms=max_ms,
    )


def parse_pressure_config(reader: TableReader) -> PressureConfig:
    """Parse the ``[pressure]`` table (admission keys sit in it directly)."""
    d = PressureConfig()
    interval = reader.number("interval_s", d.interval_s, min_value=0.05, max_value=3600.0)
    hysteresis = reader.number("hysteresis", d.hysteresis, min_value=0.0, max_value=0.9)
    proc_root = reader.string("proc_root", d.proc_root)
    cgroup_root = reader.string("cgroup_root", d.cgroup_root)
    for key, value in (("proc_root", proc_root), ("cgroup_root", cgroup_root)):
        if not value.startswith("/"):
            raise reader.error(key, "must be an absolute path")
    temperature_interval = reader.number(
        "temperature_interval_s", d.temperature_interval_s, min_value=0.0, max_value=3600.0
    )
    nvml = reader.boolean("nvml", d.nvml)
    calm = reader.integer("calm_samples", d.calm_samples, min_value=1, max_value=1000)
    admission = _parse_admission(reader)
    tables = reader.table("thresholds")
    thresholds: dict[str, SignalThreshold] = {}
    for signal in SIGNALS:
        thresholds[signal.name] = _parse_signal(tables.table(signal.config_key), signal, hysteresis)
    tables.finish()
    reader.finish()
    return PressureConfig(
        interval_s=interval,
        proc_root=proc_root.rstrip("/") or "/",
        cgroup_root=cgroup_root.rstrip("/") or "/",
        temperature_interval_s=temperature_interval,
        nvml=nvml,
        hysteresis=hysteresis,
        calm_samples=calm,
        thresholds=MappingProxyType(thresholds),
        admission=admission,
    )
