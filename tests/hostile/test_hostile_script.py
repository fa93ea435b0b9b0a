"""scripts/hostile.py: runs the suites, prints the table, records it, fails on any count."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from hostile_common import Tally

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hostile.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hostile_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_smoke_run_prints_and_records_the_table(tmp_path: Path) -> None:
    out = tmp_path / "RELIABILITY.md"
    out.write_text(
        "# Reliability\n\nProse stays.\n\n<!-- hostile:begin -->\nold\n<!-- hostile:end -->\n\nTail.\n"
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--only", "fuzz,faults,powercut", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for suite in ("fuzz inference", "fuzz raw", "client faults", "power cut: audit log"):
        assert f"| {suite} |" in proc.stdout
    text = out.read_text()
    assert "Prose stays." in text and "Tail." in text and "old" not in text
    assert "| **total** |" in text and "Run `smoke`" in text


def test_any_count_fails_the_run_and_is_listed(tmp_path: Path) -> None:
    script = _script()
    good, bad = Tally("fine"), Tally("broken")
    good.cases = bad.cases = 5
    bad.fail("lost", "record 3 is gone")
    out = tmp_path / "R.md"
    script.write_section(out, "bounded", [good, bad], 1.0)
    text = out.read_text()
    assert "| broken | 5 | 0 | 0 | 0 | 0 | 1 |" in text
    assert "record 3 is gone" in text
    assert not bad.clean and good.clean
    for kind in ("crashes", "wrong_status", "leaks", "hung", "lost"):
        t = Tally(kind)
        t.fail(kind, "x")
        assert not t.clean


def test_benchmark_section_is_ours_alone_and_replaced(tmp_path: Path) -> None:
    script = _script()
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n\n## Pressure\n\nkeep me\n\n## cloud\n\nme too\n")
    soak = Tally("soak (64 clients)")
    soak.figures.update(health_idle_p99_ms=2.0, health_p50_ms=1.5, health_p99_ms=5.0)
    script.write_benchmark(bench, "bounded", soak)
    soak.figures["health_p99_ms"] = 7.0
    script.write_benchmark(bench, "bounded", soak)
    text = bench.read_text()
    assert "keep me" in text and "me too" in text
    assert text.count("## Hostile: health under soak") == 1
    assert "| health, 64-client soak | 1.5 | 7.0 | 3.50× | 0.35× |" in text


def test_a_partial_run_keeps_the_other_rows(tmp_path: Path) -> None:
    script = _script()
    out = tmp_path / "R.md"
    first, second = Tally("fuzz raw"), Tally("soak (64 clients)")
    first.cases, second.cases = 7, 3
    script.write_section(out, "full", [first, second], 1.0)
    again = Tally("soak (64 clients)")
    again.cases = 4
    again.fail("hung", "slow")
    script.write_section(out, "full", [again], 1.0)
    text = out.read_text()
    assert "| fuzz raw (earlier run) | 7 | 0 | 0 | 0 | 0 | 0 |" in text
    assert "| soak (64 clients) | 4 | 0 | 0 | 0 | 1 | 0 |" in text
    assert "| **total** | 11 | 0 | 0 | 0 | 1 | 0 | |" in text
    assert text.count("soak (64 clients)") == 2  # the row and its failure note


def test_partial_runs_keep_one_row_per_suite_the_newest(tmp_path: Path) -> None:
    script = _script()
    out = tmp_path / "R.md"
    fuzz, soak = Tally("fuzz raw"), Tally("soak (64 clients)")
    fuzz.cases, soak.cases = 1, 10
    script.write_section(out, "full", [fuzz, soak], 1.0)
    newer_soak = Tally("soak (64 clients)")
    newer_soak.cases = 20
    script.write_section(out, "full", [newer_soak], 1.0)  # fuzz raw becomes "earlier"
    newer_fuzz = Tally("fuzz raw")
    newer_fuzz.cases = 2
    script.write_section(out, "full", [newer_fuzz], 1.0)  # soak earlier; old fuzz row gone
    text = out.read_text()
    assert "| fuzz raw | 2 |" in text and "fuzz raw (earlier run)" not in text
    assert "| soak (64 clients) (earlier run) | 20 |" in text
    assert text.count("soak (64 clients)") == 1
    assert "| **total** | 22 | 0 | 0 | 0 | 0 | 0 | |" in text
