"""Cheap readers for the kernel's own accounting: PSI, /proc/meminfo, /proc/stat, cgroups.

Each sample opens a handful of small files with ``os.open``/``os.read`` (no buffered file
objects, no psutil object graph), so reading and parsing stay near a hundred microseconds.
Parsers take text and are pure, so recorded fixtures exercise them exactly like the live
kernel does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from edge_agent.pressure._types import MemoryReading, PsiReadings, PsiResource, PsiStats

__all__ = [
    "MEMINFO_KEYS",
    "CgroupMemory",
    "CpuTimes",
    "cpu_percent_between",
    "find_cgroup_memory",
    "memory_from_meminfo",
    "parse_cpu_times",
    "parse_meminfo",
    "parse_psi",
    "read_cpu_times",
    "read_memory",
    "read_psi",
    "read_small",
]

_READ_SIZE = 16384  # meminfo is ~1.5 KiB; the loop below copes with anything longer


def read_small(path: str) -> str | None:
    """The text of a small kernel file, or ``None`` when it is absent or cannot be read.

    Kernels built without PSI have no ``/proc/pressure``; kernels booted with ``psi=0`` have
    the files but fail the read with EOPNOTSUPP. Both mean "not measured here".
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                break
            chunks.append(chunk)
            if len(chunk) < _READ_SIZE:
                break
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def _parse_psi_line(fields: list[str]) -> PsiStats:
    values: dict[str, str] = {}
    for item in fields:
        key, sep, value = item.partition("=")
        if sep:
            values[key] = value
    return PsiStats(
        avg10=float(values["avg10"]),
        avg60=float(values["avg60"]),
        avg300=float(values["avg300"]),
        total_us=int(values["total"]),
    )


def parse_psi(text: str) -> PsiResource | None:
    """Parse one ``/proc/pressure/<resource>`` file; ``None`` if it has no ``some`` line."""
    some: PsiStats | None = None
    full: PsiStats | None = None
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            if fields[0] == "some":
                some = _parse_psi_line(fields[1:])
            elif fields[0] == "full":
                full = _parse_psi_line(fields[1:])
        except (KeyError, ValueError):
            # A malformed line is treated as unmeasured rather than crashing the monitor.
            return None
    if some is None:
        return None
    return PsiResource(some=some, full=full)


def read_psi(proc_root: str) -> PsiReadings:
    def one(name: str) -> PsiResource | None:
        text = read_small(f"{proc_root}/pressure/{name}")
        return None if text is None else parse_psi(text)

    return PsiReadings(cpu=one("cpu"), memory=one("memory"), io=one("io"))


MEMINFO_KEYS = frozenset(
    ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapTotal", "SwapFree")
)


def parse_meminfo(text: str, keys: frozenset[str] | None = None) -> dict[str, int]:
    """``/proc/meminfo`` as bytes per key (the file says kB and means KiB).

    With ``keys`` only those are parsed, and parsing stops once all were seen (they sit in
    the first twenty lines), which is most of the cost of a sample saved.
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep or (keys is not None and key not in keys):
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        out[key] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
        if keys is not None and len(out) == len(keys):
            break
    return out


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    """The files that hold this service's cgroup memory limit and usage (v2 or v1)."""

    limit_path: str
    usage_path: str


def find_cgroup_memory(proc_root: str, cgroup_root: str) -> CgroupMemory | None:
    """Locate our own memory cgroup once at start; ``None`` when there is none to respect."""
    text = read_small(f"{proc_root}/self/cgroup")
    if text is None:
        return None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        path = path.strip() or "/"
        if hierarchy == "0" and controllers == "":
            base = os.path.normpath(f"{cgroup_root}/{path}")
            if os.path.exists(f"{base}/memory.max"):
                return CgroupMemory(f"{base}/memory.max", f"{base}/memory.current")
        elif "memory" in controllers.split(","):
            base = os.path.normpath(f"{cgroup_root}/memory/{path}")
            if os.path.exists(f"{base}/memory.limit_in_bytes"):
                return CgroupMemory(
                    f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes"
                )
    return None


def _read_int(path: str) -> int | None:
    text = read_small(path)
    if text is None:
        return None
    value = text.strip()
    if value == "max":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def memory_from_meminfo(info: dict[str, int]) -> MemoryReading | None:
    total = info.get("MemTotal")
    if total is None:
        return None
    available = info.get("MemAvailable")
    if available is None:
        # Kernels before 3.14 lack MemAvailable; this is the estimate they recommended.
        available = info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)
    swap_total = info.get("SwapTotal", 0)
    swap_free = info.get("SwapFree", swap_total)
    return MemoryReading(
        total_bytes=total,
        available_bytes=available,
        swap_total_bytes=swap_total,
        swap_used_bytes=max(0, swap_total - swap_free),
    )


def read_memory(proc_root: str, cgroup: CgroupMemory | None) -> MemoryReading | None:
    text = read_small(f"{proc_root}/meminfo")
    if text is None:
        return None
    reading = memory_from_meminfo(parse_meminfo(text, MEMINFO_KEYS))
    if reading is None or cgroup is None:
        return reading
    limit = _read_int(cgroup.limit_path)
    usage = _read_int(cgroup.usage_path)
    # v1 reports "no limit" as a huge page-rounded number; anything above RAM is no limit.
    if limit is None or usage is None or limit >= reading.total_bytes:
        return reading
    # The OOM killer acts on the cgroup's limit; usage includes reclaimable page cache, so
    # this errs on the side of caution exactly where it matters.
    cgroup_available = max(0, limit - usage)
    return MemoryReading(
        total_bytes=reading.total_bytes,
        available_bytes=min(reading.available_bytes, cgroup_available),
        swap_total_bytes=reading.swap_total_bytes,
        swap_used_bytes=reading.swap_used_bytes,
        cgroup_limit_bytes=limit,
    )


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat, in clock ticks."""

    busy: int
    total: int


def parse_cpu_times(text: str) -> CpuTimes | None:
    for line in text.splitlines():
        if line.startswith("cpu "):
            try:
                ticks = [int(v) for v in line.split()[1:]]
            except ValueError:
                return None
            # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
            # already inside user/nice, so it is not added again.
            counted = ticks[:8]
            idle = sum(counted[3:5])
            total = sum(counted)
            return CpuTimes(busy=total - idle, total=total)
    return None


def read_cpu_times(proc_root: str) -> CpuTimes | None:
    # Only the first line is needed; one read of a 4 KiB page holds it on any machine.
    try:
        fd = os.open(f"{proc_root}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        head = os.read(fd, 4096).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_cpu_times(head)


def cpu_percent_between(before: CpuTimes, after: CpuTimes) -> float | None:
    """Busy share of all cores between two readings, 0..100 (``None`` if no time passed)."""
    total = after.total - before.total
    if total <= 0:
        return None
    busy = after.busy - before.busy
    return max(0.0, min(100.0, 100.0 * busy / total))
