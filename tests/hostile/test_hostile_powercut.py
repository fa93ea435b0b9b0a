"""kill -9 during policy installs, credential installs and audit appends: nothing acknowledged
is lost, nothing read back is torn, the audit chain stays valid and goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_common import Tally
from hostile_powercut import run_audit_cuts, run_credential_cuts, run_policy_cuts

SUITES = {"policy": run_policy_cuts, "credentials": run_credential_cuts, "audit": run_audit_cuts}


@pytest.mark.parametrize("kind", sorted(SUITES))
def test_power_cuts_bounded(tmp_path: Path, kind: str) -> None:
    tally = Tally(f"power cut {kind}")
    SUITES[kind](tmp_path, tally, 20, seed=20)
    assert tally.cases == 20
    assert tally.clean, (tally.summary(), tally.figures)
    # The cuts must have landed among real writes, not before the first one.
    written = next(v for k, v in tally.figures.items() if "temp" not in k)
    assert written >= 20, tally.figures


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SUITES))
def test_power_cuts_full(tmp_path: Path, kind: str) -> None:
    tally = Tally(f"power cut {kind}")
    SUITES[kind](tmp_path, tally, 200, seed=200)
    assert tally.clean, (tally.summary(), tally.figures)
