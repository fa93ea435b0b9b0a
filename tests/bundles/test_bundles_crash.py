"""Crash safety: SIGKILL the installer process at random moments; after recovery exactly one
valid (signature-verified) bundle is active, a rollback target is still there, and nothing
half-staged is left."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bundle_fixtures import FileHost, Fleet, make_folder, small_config

from edge_agent.bundles import BundleManager, load_manifest, verify_bundle


def _check_exactly_one_valid(tmp: Path, fleet: Fleet) -> int:
    m = BundleManager(small_config(), state_dir=tmp / "state", host=FileHost())
    m.recover()
    bundles = m.list_bundles()
    active = [b for b in bundles if b.active]
    assert len(active) == 1, bundles
    # From the second install on, a kill at any moment leaves the fallback too.
    assert len(bundles) == 2, bundles
    folder = m.store.slot_dir(active[0].slot)
    doc = m.trust.load()
    report = verify_bundle(folder, doc.keys_for("bundle"), 1, revoked=doc.revoked)
    assert report.ok, report.summary()
    assert load_manifest(folder).release == active[0].release
    assert not any(m.store.staging.iterdir())
    assert not any(m.store.trash.iterdir())
    assert not list(m.store.root.glob(".*.tmp"))
    return active[0].release


class _Launcher:
    def __init__(self) -> None:
        script = Path(__file__).with_name("bundle_crash_launcher.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def start(self, state: Path, archive: Path, rollback: bool) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{state} {archive} {int(rollback)}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline().split()[1])

    def wait(self) -> int:
        assert self.proc.stdout is not None
        return int(self.proc.stdout.readline().split()[1])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _run(tmp: Path, iterations: int, seed: int) -> None:
    rng = random.Random(seed)
    fleet = Fleet(tmp / "fleet")
    state = tmp / "state"
    m = BundleManager(small_config(), state_dir=state, host=FileHost())
    fleet.trust(m.trust.path, "ops1")
    m.recover()
    first = fleet.archive(fleet.sign(make_folder(tmp / "src", 1), "ops1"))
    asyncio.run(m.install_archive(first))
    archives = [
        fleet.archive(fleet.sign(make_folder(tmp / "src", r), "ops1"))
        for r in range(2, iterations + 2)
    ]
    launcher = _Launcher()
    try:
        # Calibrate: how long does an uninterrupted install (with a rollback) take?
        launcher.start(state, archives[0], True)  # the clock starts once the child runs
        t0 = time.monotonic()
        assert launcher.wait() == 0
        span = time.monotonic() - t0
        killed = 0
        releases_seen = {_check_exactly_one_valid(tmp, fleet)}  # r2 and r1 installed now
        for archive in archives[1:]:
            before = _check_exactly_one_valid(tmp, fleet)
            release = int(archive.stem.rsplit("-r", 1)[1])
            pid = launcher.start(state, archive, rng.random() < 0.3)
            time.sleep(rng.uniform(0, span))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if launcher.wait() == -signal.SIGKILL:
                killed += 1
                span *= 1.05
            else:
                # The install beat the kill: the calibration overestimated it (a cold first
                # run, a busy box). Aim earlier, so the kills keep landing inside installs.
                span *= 0.8
            after = _check_exactly_one_valid(tmp, fleet)
            # The old bundle, the new one, or (after a rollback) the one before: never none.
            assert after in {before, release} or after < release, (before, release, after)
            releases_seen.add(after)
    finally:
        launcher.close()
    # The random points must really have landed inside installs, not only after them.
    assert killed >= iterations // 3, killed
    assert len(releases_seen) > 2


def test_kill_9_during_install_leaves_one_valid_bundle(tmp_path: Path) -> None:
    _run(tmp_path, 50, seed=1234)


@pytest.mark.slow
def test_kill_9_during_install_soak(tmp_path: Path) -> None:
    _run(tmp_path, 200, seed=int(time.time()))
