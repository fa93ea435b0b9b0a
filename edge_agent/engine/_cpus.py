"""How many cores the engine may use: the default for ``engine.intra_op_threads = 0``.

onnxruntime's own default is one thread per physical core as *it* detects them; on the
2-core test VM that detection gave one thread (half the decode speed), and it ignores the
limits a systemd unit or a container sets. Here the count comes from what Linux says this
process may run on: the CPUs in its affinity mask (``CPUAffinity=``, cpusets), counted once
per physical core (SMT siblings share one core's matmul units, and int4 decode does not gain
from them), capped by the cgroup v2 CPU quota (``CPUQuota=``, ``docker --cpus``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["resolve_intra_op_threads", "usable_cores"]

_SYSFS_CPUS = Path("/sys/devices/system/cpu")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def resolve_intra_op_threads(configured: int) -> int:
    """The intra-op thread count to use: ``configured``, or :func:`usable_cores` for 0."""
    return configured if configured > 0 else usable_cores()


def usable_cores(
    cpus: Iterable[int] | None = None,
    sysfs: Path = _SYSFS_CPUS,
    cgroup_root: Path = _CGROUP_ROOT,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
) -> int:
    """Physical cores among ``cpus`` (default: this process's affinity), capped by quota."""
    allowed = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    cores = {_core_of(cpu, sysfs) for cpu in allowed}
    count = max(1, len(cores))
    quota = _cgroup_cpu_limit(cgroup_root, proc_cgroup)
    return max(1, min(count, quota)) if quota is not None else count


def _core_of(cpu: int, sysfs: Path) -> tuple[str, ...]:
    topology = sysfs / f"cpu{cpu}" / "topology"
    try:
        package = (topology / "physical_package_id").read_text().strip()
        core = (topology / "core_id").read_text().strip()
    except OSError:
        return ("cpu", str(cpu))  # no topology (some containers, odd kernels): one per CPU
    return (package, core)


def _cgroup_cpu_limit(cgroup_root: Path, proc_cgroup: Path) -> int | None:
    """Whole CPUs allowed by the tightest cgroup v2 ``cpu.max`` on our path, if any."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    # cgroup v2 has one line "0::/path"; v1 hierarchies (other lines) carry no cpu.max.
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return None
    limit: int | None = None
    node = cgroup_root / path.lstrip("/")
    while True:
        quota = _read_cpu_max(node / "cpu.max")
        if quota is not None:
            limit = quota if limit is None else min(limit, quota)
        if node == cgroup_root or cgroup_root not in node.parents:
            return limit
        node = node.parent


def _read_cpu_max(path: Path) -> int | None:
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    # Rounded down: a second thread on half a CPU's quota is throttled mid-step, and
    # onnxruntime's threads meet at a barrier every operator.
    return max(1, quota // period)
