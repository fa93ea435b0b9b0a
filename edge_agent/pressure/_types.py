"""The immutable values the pressure monitor publishes.

Everything here is a frozen dataclass so a snapshot can be handed to the RPC layer, the
metrics collector (another thread) and the admission controller without copying or locking.
A reading that the box cannot provide (no PSI, no sensors, no NVML) is ``None`` or an empty
tuple: nothing is ever invented.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "AcceleratorMemory",
    "EngineLoad",
    "MemoryReading",
    "PressureLevel",
    "PressureSnapshot",
    "PsiReadings",
    "PsiResource",
    "PsiStats",
    "Temperature",
]


class PressureLevel(enum.IntEnum):
    """How hard the box is pressed; ordered so ``max()`` and ``>=`` work."""

    OK = 0
    ELEVATED = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        """Lower-case name for status lines, mDNS TXT and metrics (``ok``, ``elevated``...)."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class PsiStats:
    """One line of a ``/proc/pressure/*`` file: percentages of wall time stalled."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int  # cumulative stall time in microseconds


@dataclass(frozen=True, slots=True)
class PsiResource:
    """``some``: at least one task stalled; ``full``: all non-idle tasks stalled.

    ``full`` is ``None`` where the kernel does not print it (the cpu file before 5.13).
    """

    some: PsiStats
    full: PsiStats | None


@dataclass(frozen=True, slots=True)
class PsiReadings:
    """Per resource; ``None`` where the kernel has no PSI (CONFIG_PSI off, ``psi=0``)."""

    cpu: PsiResource | None = None
    memory: PsiResource | None = None
    io: PsiResource | None = None


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """System memory in bytes, tightened by the service's cgroup limit when there is one."""

    total_bytes: int
    available_bytes: int
    swap_total_bytes: int
    swap_used_bytes: int
    # The cgroup's own limit when it is below the machine's memory (systemd MemoryMax=).
    cgroup_limit_bytes: int | None = None

    @property
    def available_fraction(self) -> float:
        limit = self.total_bytes if self.cgroup_limit_bytes is None else self.cgroup_limit_bytes
        return self.available_bytes / limit if limit > 0 else 0.0

    @property
    def swap_used_fraction(self) -> float | None:
        if self.swap_total_bytes <= 0:
            return None
        return self.swap_used_bytes / self.swap_total_bytes


@dataclass(frozen=True, slots=True)
class Temperature:
    """One sensor as psutil names it (``coretemp/Package id 0``)."""

    sensor: str
    celsius: float


@dataclass(frozen=True, slots=True)
class AcceleratorMemory:
    """Device memory of one accelerator, from its vendor library (NVML)."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int

    @property
    def free_fraction(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes > 0 else 0.0


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What the engine (through its supervisor) reports about its own work."""

    active_requests: int = 0
    queued_requests: int = 0
    kv_bytes_in_use: int = 0
    kv_bytes_capacity: int | None = None
    per_token_latency_s: float | None = None
    # KV cache of idle cached lanes (prefix reuse): allocated, so missing from MemAvailable,
    # but freed on request, so room for a request that needs it.
    kv_bytes_reclaimable: int = 0

    @property
    def kv_used_fraction(self) -> float | None:
        if not self.kv_bytes_capacity:
            return None
        return self.kv_bytes_in_use / self.kv_bytes_capacity


@dataclass(frozen=True, slots=True)
class PressureSnapshot:
    """Everything one sample saw, the level it led to, and why."""

    taken_at: float  # time.monotonic() of the sample
    wall_time: float  # time.time() of the sample, for status output
    sequence: int  # 1 for the first sample; lets readers tell a fresh one
    level: PressureLevel
    # Machine-readable, e.g. "memory.psi_full_avg10=12.3>=10"; empty when the level is ok.
    reasons: tuple[str, ...]
    # Per-signal level, e.g. {"memory.psi_full_avg10": ELEVATED}, only signals above ok.
    signal_levels: tuple[tuple[str, PressureLevel], ...]
    psi: PsiReadings
    memory: MemoryReading | None
    cpu_percent: float | None  # all cores, 0..100; None on the very first sample
    temperatures: tuple[Temperature, ...]
    accelerators: tuple[AcceleratorMemory, ...]
    engine: EngineLoad | None

    @property
    def max_temperature_c(self) -> float | None:
        return max((t.celsius for t in self.temperatures), default=None)
