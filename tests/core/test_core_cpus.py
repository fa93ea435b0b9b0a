"""The default intra-op thread count: physical cores this process may run on, within quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.engine._cpus import resolve_intra_op_threads, usable_cores
from edge_agent.engine._providers import session_overlay


def _topology(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    """A sysfs cpu tree: cpu number → (package, core)."""
    sysfs = root / "sys" / "devices" / "system" / "cpu"
    for cpu, (package, core) in cores.items():
        topo = sysfs / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return sysfs


def _cgroup(root: Path, limits: dict[str, str], own: str = "/system.slice/edge-agent.service") -> tuple[Path, Path]:  # fmt: skip
    """A cgroup v2 tree with ``cpu.max`` files (path → content) and /proc/self/cgroup."""
    cg_root = root / "cgroup"
    (cg_root / own.lstrip("/")).mkdir(parents=True)
    for path, content in limits.items():
        node = cg_root / path.lstrip("/")
        node.mkdir(parents=True, exist_ok=True)
        (node / "cpu.max").write_text(content + "\n")
    proc = root / "proc_self_cgroup"
    proc.write_text(f"0::{own}\n")
    return cg_root, proc


# Four cores with two SMT threads each: cpu n and n+4 share a core (the usual numbering).
SMT = {cpu: (0, cpu % 4) for cpu in range(8)}


def test_smt_siblings_count_once(tmp_path: Path) -> None:
    sysfs = _topology(tmp_path, SMT)
    cg, proc = _cgroup(tmp_path, {})
    assert usable_cores(range(8), sysfs, cg, proc) == 4


def test_only_cpus_in_the_affinity_mask_count(tmp_path: Path) -> None:
    sysfs = _topology(tmp_path, SMT)
    cg, proc = _cgroup(tmp_path, {})
    assert usable_cores([0, 4], sysfs, cg, proc) == 1  # two threads of one core
    assert usable_cores([0, 1, 5], sysfs, cg, proc) == 2


def test_cores_of_two_packages_are_distinct(tmp_path: Path) -> None:
    # core_id restarts at 0 on the second socket.
    sysfs = _topology(tmp_path, {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)})
    cg, proc = _cgroup(tmp_path, {})
    assert usable_cores(range(4), sysfs, cg, proc) == 4


def test_without_topology_each_cpu_counts(tmp_path: Path) -> None:
    cg, proc = _cgroup(tmp_path, {})
    assert usable_cores(range(3), tmp_path / "absent", cg, proc) == 3


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"/system.slice/edge-agent.service": "max 100000"}, 4),
        ({"/system.slice/edge-agent.service": "200000 100000"}, 2),
        # Rounded down: a second spinning thread on half a CPU would be throttled mid-step.
        ({"/system.slice/edge-agent.service": "150000 100000"}, 1),
        ({"/system.slice/edge-agent.service": "20000 100000"}, 1),  # never below one
        # The tightest limit on the path applies, wherever it is set.
        ({"/system.slice": "300000 100000", "/system.slice/edge-agent.service": "max 100000"}, 3),
        ({"/": "100000 100000"}, 1),
        ({"/system.slice/edge-agent.service": "garbage"}, 4),
    ],
)
def test_cgroup_quota_caps_the_count(tmp_path: Path, limits: dict[str, str], expected: int) -> None:
    sysfs = _topology(tmp_path, SMT)
    cg, proc = _cgroup(tmp_path, limits)
    assert usable_cores(range(8), sysfs, cg, proc) == expected


def test_cgroup_v1_or_no_cgroup_file_means_no_quota(tmp_path: Path) -> None:
    sysfs = _topology(tmp_path, SMT)
    v1 = tmp_path / "v1"
    v1.write_text("12:cpu,cpuacct:/docker/abc\n")
    assert usable_cores(range(8), sysfs, tmp_path, v1) == 4
    assert usable_cores(range(8), sysfs, tmp_path, tmp_path / "missing") == 4


def test_explicit_setting_wins_and_zero_resolves_to_this_box() -> None:
    assert resolve_intra_op_threads(3) == 3
    resolved = resolve_intra_op_threads(0)
    assert 1 <= resolved <= len(os.sched_getaffinity(0))
    assert resolved == usable_cores()


@pytest.mark.parametrize("spinning", [False, True])
def test_session_overlay_sets_threads_spinning_and_batch(spinning: bool) -> None:
    overlay = session_overlay(2, 8, spinning)
    session = overlay["model"]["decoder"]["session_options"]
    flag = "1" if spinning else "0"
    # onnxruntime reads these as session config entries (strings), genai passes them through.
    assert session["session.intra_op.allow_spinning"] == flag
    assert session["session.inter_op.allow_spinning"] == flag
    assert session["session.force_spinning_stop"] == "1"  # never spin past a step
    assert session["intra_op_num_threads"] == 2
    assert session["enable_cpu_mem_arena"] is False  # a burst's activations are given back
    assert session_overlay(2, 8, spinning, True)["model"]["decoder"]["session_options"][
        "enable_cpu_mem_arena"
    ]
    assert overlay["engine"]["static_batching"]["max_batch_size"] == 8
    # 0 threads leaves onnxruntime-genai's own choice in place.
    assert (
        "intra_op_num_threads" not in session_overlay(0, 8)["model"]["decoder"]["session_options"]
    )
