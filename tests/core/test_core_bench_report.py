"""scripts/bench_report.py: each benchmark rewrites its own section of BENCHMARKS.md only."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_report", ROOT / "scripts" / "bench_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_report", module)
    spec.loader.exec_module(module)
    return module


DOC = "# Benchmarks\n\n## A\n\nold a\n\n## B (scripts/b.py)\n\nold b\nmore b\n\n## C\n\nc\n"


def test_a_middle_section_is_replaced_and_the_others_kept(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(DOC)
    _bench_report().replace_section("## B (scripts/b.py)\n\nnew b\n", path)
    assert path.read_text() == DOC.replace("old b\nmore b\n", "new b\n")


def test_the_last_and_a_new_section(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(DOC)
    report = _bench_report()
    report.replace_section("## C\n\nnew c", path)
    report.replace_section("## D\n\nd\n", path)
    assert path.read_text() == DOC.replace("\nc\n", "\nnew c\n") + "\n## D\n\nd\n"


def test_a_heading_that_only_starts_another_is_not_the_section(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(DOC)
    _bench_report().replace_section("## B\n\nother\n", path)  # "## B (scripts/b.py)" stays
    assert path.read_text() == DOC + "\n## B\n\nother\n"


def test_rewriting_the_same_section_changes_nothing(tmp_path: Path) -> None:
    real = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(real)
    start = real.index("\n## Bundles\n") + 1
    section = real[start : real.index("\n## ", start + 3) + 1]
    _bench_report().replace_section(section, path)
    assert path.read_text() == real


def test_a_section_without_its_heading_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="heading"):
        _bench_report().replace_section("no heading\n", tmp_path / "BENCHMARKS.md")
