"""Soak: 64 concurrent clients with a signed bundle activation in the middle (bounded here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_harness import RunningAgent
from hostile_common import LoopErrors, Tally
from hostile_soak import run_soak


def _soak(daemon: RunningAgent, tmp_path: Path, seconds: float) -> Tally:
    tally = Tally("soak")
    errors = LoopErrors(daemon)
    try:
        run_soak(daemon, tmp_path, tally, seconds)
        errors.drain(tally)
    finally:
        errors.close()
    return tally


def test_soak_bounded(daemon: RunningAgent, tmp_path: Path) -> None:
    tally = _soak(daemon, tmp_path, 30)
    # Functional outcomes only: latency figures are reported by scripts/hostile.py.
    assert tally.clean, (tally.summary(), tally.figures)
    assert tally.figures["bundles_activated"] == ["1.1.0", "1.2.0", "1.3.0"]
    assert tally.figures["codes"].get("OK", 0) > 100, tally.figures
    assert tally.figures["rss_growth_pct"] < 5.0


@pytest.mark.slow
def test_soak_full(daemon: RunningAgent, tmp_path: Path) -> None:
    tally = _soak(daemon, tmp_path, 600)
    assert tally.clean, (tally.summary(), tally.figures)
