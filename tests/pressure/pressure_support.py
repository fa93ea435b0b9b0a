"""Helpers shared by the pressure tests: recorded /proc trees and a writable copy.

(Not a conftest.py: several areas own tests/, and duplicate conftest modules trip mypy.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edge_agent.pressure import EngineLoad, PressureConfig, PressureSnapshot, Sampler

FIXTURES = Path(__file__).parent / "fixtures"


class ProcTree:
    """A writable /proc look-alike in a temp dir, seeded from a recorded kernel fixture."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def set_psi(self, resource: str, some_avg10: float, full_avg10: float | None = None) -> None:
        lines = [f"some avg10={some_avg10:.2f} avg60=0.00 avg300=0.00 total=1000"]
        if full_avg10 is not None:
            lines.append(f"full avg10={full_avg10:.2f} avg60=0.00 avg300=0.00 total=500")
        self.write(f"pressure/{resource}", "\n".join(lines) + "\n")

    def set_memory(
        self, total: int, available: int, swap_total: int = 0, swap_free: int = 0
    ) -> None:
        kib = 1024
        self.write(
            "meminfo",
            f"MemTotal:       {total // kib} kB\n"
            f"MemFree:        {available // kib} kB\n"
            f"MemAvailable:   {available // kib} kB\n"
            "Buffers:           0 kB\n"
            "Cached:            0 kB\n"
            f"SwapTotal:      {swap_total // kib} kB\n"
            f"SwapFree:       {swap_free // kib} kB\n",
        )


def make_proc_tree(tmp_path: Path, kernel: str = "kernel_6_x") -> ProcTree:
    root = tmp_path / "proc"
    shutil.copytree(FIXTURES / kernel, root)
    return ProcTree(root)


class Box:
    """A sampled fixture box: write its /proc files, then ``resample()`` for a snapshot.

    The snapshot goes through the real ``Sampler`` (parsing, levels), so admission tests see
    exactly what the monitor would publish for such a box.
    """

    def __init__(self, tmp_path: Path, *, total: int, available: int) -> None:
        self.tree = make_proc_tree(tmp_path)
        self.tree.set_memory(total=total, available=available)
        for resource in ("cpu", "memory", "io"):
            self.tree.set_psi(resource, 0.0, 0.0)
        self.engine = EngineLoad()
        config = PressureConfig(
            proc_root=str(self.tree.root), cgroup_root=str(tmp_path / "nocg"), nvml=False
        )
        self._sampler = Sampler(config, lambda: self.engine, temperatures=lambda: ())
        self.snapshot: PressureSnapshot = self._sampler.sample()

    def resample(self) -> None:
        self.snapshot = self._sampler.sample()
