"""Parsing the kernel's files: PSI in its three shapes, meminfo, /proc/stat, cgroup limits."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from pressure_support import FIXTURES, make_proc_tree

from edge_agent.pressure._procfs import (
    CpuTimes,
    cpu_percent_between,
    find_cgroup_memory,
    memory_from_meminfo,
    parse_cpu_times,
    parse_meminfo,
    parse_psi,
    read_cpu_times,
    read_memory,
    read_psi,
    read_small,
)

GIB = 1024**3


def test_psi_modern_kernel_cpu_has_full_line_of_zeros() -> None:
    psi = read_psi(str(FIXTURES / "kernel_6_x"))
    assert psi.cpu is not None
    assert psi.memory is not None
    assert psi.io is not None
    assert psi.cpu.full is not None
    assert psi.cpu.full.avg10 == 0.0
    assert psi.cpu.full.total_us == 0
    assert psi.cpu.some.avg10 == pytest.approx(41.83)
    assert psi.cpu.some.total_us == 27572032


def test_psi_kernel_5_4_cpu_without_full_line() -> None:
    psi = read_psi(str(FIXTURES / "kernel_5_4"))
    assert psi.cpu is not None
    assert psi.cpu.full is None
    assert psi.cpu.some.avg10 == pytest.approx(62.10)
    assert psi.memory is not None
    assert psi.memory.full is not None
    assert psi.memory.full.avg10 == pytest.approx(11.20)
    assert psi.memory.some.avg60 == pytest.approx(9.81)
    assert psi.memory.some.avg300 == pytest.approx(2.40)


def test_kernel_without_psi_has_no_readings_but_memory() -> None:
    root = str(FIXTURES / "kernel_no_psi")
    psi = read_psi(root)
    assert psi.cpu is None
    assert psi.memory is None
    assert psi.io is None
    assert read_memory(root, None) is not None


def test_psi_read_failing_with_eopnotsupp_means_unmeasured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kernel booted with psi=0 has the files but refuses the read; that kernel cannot be
    # booted here, so the read itself is made to fail the way it does there.
    tree = make_proc_tree(tmp_path)
    real_read = os.read
    pressure_dir = str(tree.root / "pressure")
    opened: dict[int, str] = {}
    real_open = os.open

    def tracking_open(path: str, flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)
        opened[fd] = str(path)
        return fd

    def failing_read(fd: int, n: int) -> bytes:
        if opened.get(fd, "").startswith(pressure_dir):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_read(fd, n)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "read", failing_read)
    psi = read_psi(str(tree.root))
    assert psi.cpu is None
    assert psi.memory is None
    assert psi.io is None
    assert read_memory(str(tree.root), None) is not None  # other files still read


def test_read_error_after_open_is_unmeasured(tmp_path: Path) -> None:
    # A directory opens fine and fails on read (EISDIR): the real read-time failure path.
    (tmp_path / "pressure" / "memory").mkdir(parents=True)
    assert read_small(str(tmp_path / "pressure" / "memory")) is None
    assert read_psi(str(tmp_path)).memory is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "full avg10=1.00 avg60=0.00 avg300=0.00 total=3\n",  # no some line
        "some avg10=x avg60=0.00 avg300=0.00 total=3\n",
        "some avg10=1.00 avg60=0.00 total=3\n",  # missing avg300
    ],
)
def test_malformed_psi_is_unmeasured(text: str) -> None:
    assert parse_psi(text) is None


def test_meminfo_bytes_and_swap() -> None:
    text = (FIXTURES / "kernel_5_4" / "meminfo").read_text()
    info = parse_meminfo(text)
    assert info["MemTotal"] == 32780788 * 1024
    assert info["HugePages_Total"] == 0  # unit-less lines stay counts
    reading = memory_from_meminfo(info)
    assert reading is not None
    assert reading.available_bytes == 3145728 * 1024
    assert reading.swap_used_bytes == (8388604 - 2097148) * 1024
    assert reading.swap_used_fraction == pytest.approx(0.75, abs=0.01)
    assert reading.available_fraction == pytest.approx(0.096, abs=0.001)


def test_meminfo_selected_keys_stop_early() -> None:
    text = (FIXTURES / "kernel_5_4" / "meminfo").read_text()
    info = parse_meminfo(text, frozenset({"MemTotal", "SwapFree"}))
    assert info == {"MemTotal": 32780788 * 1024, "SwapFree": 2097148 * 1024}


def test_meminfo_without_memavailable_uses_free_buffers_cached() -> None:
    info = parse_meminfo((FIXTURES / "meminfo_no_memavailable").read_text())
    assert "MemAvailable" not in info
    reading = memory_from_meminfo(info)
    assert reading is not None
    assert reading.available_bytes == info["MemFree"] + info["Buffers"] + info["Cached"]
    assert reading.swap_used_fraction is None  # no swap on that box


def test_cpu_times_and_percent() -> None:
    before = parse_cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    after = parse_cpu_times("cpu  200 0 100 850 50 0 0 0 0 0\n")
    assert before == CpuTimes(busy=150, total=1000)
    assert after is not None
    assert before is not None
    assert cpu_percent_between(before, after) == pytest.approx(75.0)
    assert cpu_percent_between(after, after) is None
    assert read_cpu_times("/proc") is not None
    assert read_cpu_times(str(FIXTURES / "kernel_no_psi" / "missing")) is None


def _cgroup_v2(tmp_path: Path, limit: str, current: int) -> str:
    base = tmp_path / "cg" / "system.slice" / "edge-agent.service"
    base.mkdir(parents=True)
    (base / "memory.max").write_text(limit + "\n")
    (base / "memory.current").write_text(f"{current}\n")
    return str(tmp_path / "cg")


def test_cgroup_v2_limit_tightens_available(tmp_path: Path) -> None:
    tree = make_proc_tree(tmp_path)
    tree.set_memory(total=24 * GIB, available=20 * GIB)
    cg_root = _cgroup_v2(tmp_path, str(8 * GIB), 6 * GIB)
    cgroup = find_cgroup_memory(str(tree.root), cg_root)
    assert cgroup is not None
    reading = read_memory(str(tree.root), cgroup)
    assert reading is not None
    assert reading.cgroup_limit_bytes == 8 * GIB
    assert reading.available_bytes == 2 * GIB
    assert reading.available_fraction == pytest.approx(0.25)


def test_cgroup_v2_without_limit_is_ignored(tmp_path: Path) -> None:
    tree = make_proc_tree(tmp_path)
    tree.set_memory(total=24 * GIB, available=20 * GIB)
    cgroup = find_cgroup_memory(str(tree.root), _cgroup_v2(tmp_path, "max", 6 * GIB))
    reading = read_memory(str(tree.root), cgroup)
    assert reading is not None
    assert reading.cgroup_limit_bytes is None
    assert reading.available_bytes == 20 * GIB


def test_cgroup_v1_memory_controller(tmp_path: Path) -> None:
    tree = make_proc_tree(tmp_path, "kernel_5_4")
    base = tmp_path / "cg" / "memory" / "system.slice" / "edge-agent.service"
    base.mkdir(parents=True)
    (base / "memory.limit_in_bytes").write_text(f"{16 * GIB}\n")
    (base / "memory.usage_in_bytes").write_text(f"{15 * GIB}\n")
    cgroup = find_cgroup_memory(str(tree.root), str(tmp_path / "cg"))
    assert cgroup is not None
    reading = read_memory(str(tree.root), cgroup)
    assert reading is not None
    assert reading.available_bytes == 1 * GIB  # tighter than MemAvailable's 3 GiB


def test_no_cgroup_file_means_no_cgroup() -> None:
    assert find_cgroup_memory(str(FIXTURES / "kernel_no_psi"), "/sys/fs/cgroup") is None
