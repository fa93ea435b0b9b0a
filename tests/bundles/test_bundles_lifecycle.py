"""Activation, rollback, failures during trial load / probe, recovery and the inbox."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from bundle_fixtures import FileHost, Fleet, make_folder, small_config

from edge_agent.bundles import BundleManager, InboxWatcher
from edge_agent.errors import EdgeAgentError


def _manager(tmp: Path, fleet: Fleet, host: FileHost | None = None, **cfg: object) -> BundleManager:
    m = BundleManager(small_config(**cfg), state_dir=tmp / "state", host=host or FileHost())
    if not m.trust.path.exists():
        fleet.trust(m.trust.path, "ops1")
    m.recover()
    return m


async def _install(m: BundleManager, fleet: Fleet, tmp: Path, release: int, **kw: object) -> None:
    folder = fleet.sign(make_folder(tmp / f"src-{uuid.uuid4().hex}", release), "ops1")
    await m.install_archive(fleet.archive(folder), **kw)  # type: ignore[arg-type]


def _state(m: BundleManager) -> list[tuple[int, str, bool]]:
    return [(b.release, b.slot, b.active) for b in m.list_bundles()]


async def test_activate_then_rollback_and_forward_again(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    host = FileHost()
    m = _manager(tmp_path, fleet, host)
    await _install(m, fleet, tmp_path, 1)
    await _install(m, fleet, tmp_path, 2)
    assert _state(m) == [(2, "b", True), (1, "a", False)]
    info = await m.rollback()
    assert (info.release, info.slot) == (1, "a")
    assert host.active_release == 1
    assert _state(m) == [(1, "a", True), (2, "b", False)]
    await m.rollback()
    assert host.active_release == 2
    # A third install goes to the free slot; its commit retires the old rollback target.
    await _install(m, fleet, tmp_path, 3)
    assert _state(m) == [(3, "c", True), (2, "b", False)]
    assert m.active_model_dir() == m.store.slot_dir("c")
    assert not m.store.slot_dir("a").exists()


async def test_rollback_without_previous_is_refused(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    m = _manager(tmp_path, fleet)
    with pytest.raises(EdgeAgentError, match="no previous bundle"):
        await m.rollback()


@pytest.mark.parametrize(
    ("attr", "step"), [("fail_trial", "trial load"), ("fail_probe", "health probe")]
)
async def test_failed_activation_keeps_the_old_bundle(tmp_path: Path, attr: str, step: str) -> None:
    fleet = Fleet(tmp_path / "fleet")
    host = FileHost()
    m = _manager(tmp_path, fleet, host)
    await _install(m, fleet, tmp_path, 1)
    await _install(m, fleet, tmp_path, 2)
    setattr(host, attr, "smoke generation produced no token")
    with pytest.raises(EdgeAgentError, match=f"{step} of demo failed: smoke generation"):
        await _install(m, fleet, tmp_path, 3)
    # Both known bundles survive: the active one and the rollback target.
    assert _state(m) == [(2, "b", True), (1, "a", False)]
    assert host.active_release == 2
    assert not m.store.slot_dir("c").exists()
    assert _state(_manager(tmp_path, fleet)) == [(2, "b", True), (1, "a", False)]
    setattr(host, attr, None)
    assert (await m.rollback()).release == 1
    assert host.active_release == 1
    await m.rollback()
    # The refused release was never recorded: once fixed, the same release installs.
    await _install(m, fleet, tmp_path / "fixed", 3)
    assert _state(m) == [(3, "c", True), (2, "b", False)]


async def test_install_without_activation_then_switch_by_rollback(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    host = FileHost()
    m = _manager(tmp_path, fleet, host)
    with pytest.raises(EdgeAgentError, match="first bundle must be activated"):
        await _install(m, fleet, tmp_path, 1, activate=False)
    await _install(m, fleet, tmp_path, 1)
    await _install(m, fleet, tmp_path, 2, activate=False)
    assert _state(m) == [(1, "a", True), (2, "b", False)]
    assert host.active_release == 1
    await m.rollback()
    assert _state(m) == [(2, "b", True), (1, "a", False)]


async def test_recover_drops_a_corrupted_slot_and_keeps_the_valid_one(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    m = _manager(tmp_path, fleet)
    await _install(m, fleet, tmp_path, 1)
    await _install(m, fleet, tmp_path, 2)
    # Bit rot (or meddling) in the active slot while the box was off.
    data = m.store.slot_dir("b") / "model.onnx"
    data.write_bytes(data.read_bytes()[:-1] + b"!")
    (m.store.staging / "leftover").mkdir()
    restarted = _manager(tmp_path, fleet)
    assert _state(restarted) == [(1, "a", True)]
    assert not any(restarted.store.staging.iterdir())
    # The release counter survived: release 2 again is still refused after the fallback.
    with pytest.raises(EdgeAgentError, match="anti-rollback"):
        await _install(restarted, fleet, tmp_path / "again", 2)


async def test_recover_reverts_an_unconfirmed_switch(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    m = _manager(tmp_path, fleet)
    await _install(m, fleet, tmp_path, 1)
    await _install(m, fleet, tmp_path, 2)
    # A power cut between "pointer says trial" and the probe's commit.
    from edge_agent.bundles import Pointer

    await _install(m, fleet, tmp_path, 3)
    # A power cut while release 4 in slot a was switched to but not yet confirmed.
    shutil.copytree(m.store.slot_dir("b"), m.store.slot_dir("a"))
    m.store.write_pointer(Pointer("c", "b", "trial", "a"))
    restarted = _manager(tmp_path, fleet)
    assert _state(restarted) == [(3, "c", True), (2, "b", False)]
    assert not restarted.store.slot_dir("a").exists()


async def test_recover_reads_a_two_slot_trial_pointer(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    m = _manager(tmp_path, fleet)
    await _install(m, fleet, tmp_path, 1)
    await _install(m, fleet, tmp_path, 2)
    # Written by the two-slot version: "active" was the unconfirmed bundle.
    (m.store.root / "current.json").write_text('{"active": "b", "previous": "a", "state": "trial"}')
    restarted = _manager(tmp_path, fleet)
    assert _state(restarted) == [(1, "a", True), (2, "b", False)]


async def test_inbox_installs_settled_files_and_rejects_bad_ones(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    inbox = tmp_path / "usb"
    m = _manager(tmp_path, fleet, inbox_dir=inbox)
    assert m.inbox_dir == inbox
    watcher = InboxWatcher(m, inbox, poll_seconds=0.1)
    inbox.mkdir()
    good = fleet.archive(fleet.sign(make_folder(tmp_path / "g", 1), "ops1"))
    bad_folder = fleet.sign(make_folder(tmp_path / "b", 2), "rogue")
    bad = fleet.archive(bad_folder)
    (inbox / "good.tar").write_bytes(good.read_bytes())
    (inbox / "bad.tar").write_bytes(bad.read_bytes())
    (inbox / "notes.txt").write_text("ignored")
    assert await watcher.scan_once() == []  # first sight: wait for the copy to settle
    results = dict(await watcher.scan_once())
    assert results["good.tar"] == "activated"
    assert "unknown-key" in results["bad.tar"]
    assert (inbox / "done" / "good.tar").is_file()
    assert (inbox / "rejected" / "bad.tar").is_file()
    reason = (inbox / "rejected" / "bad.tar.reason.txt").read_text()
    assert "unknown-key" in reason
    assert (inbox / "notes.txt").exists()
    assert _state(m) == [(1, "a", True)]
    assert await watcher.scan_once() == []


async def test_inbox_waits_while_a_copy_is_growing(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    inbox = tmp_path / "usb"
    m = _manager(tmp_path, fleet)
    watcher = InboxWatcher(m, inbox, poll_seconds=0.1)
    data = fleet.archive(fleet.sign(make_folder(tmp_path / "g", 1), "ops1")).read_bytes()
    inbox.mkdir()
    target = inbox / "copying.tar"
    target.write_bytes(data[:1000])
    assert await watcher.scan_once() == []
    target.write_bytes(data[:5000])
    assert await watcher.scan_once() == []  # it grew: still not settled
    target.write_bytes(data)
    assert await watcher.scan_once() == []
    assert await watcher.scan_once() == [("copying.tar", "activated")]


async def test_a_garbage_pointer_is_rebuilt_not_a_reason_to_delete(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    m = _manager(tmp_path, fleet)
    await _install(m, fleet, tmp_path, 1)
    await _install(m, fleet, tmp_path, 2)
    (m.store.root / "current.json").write_text("{not json")
    restarted = _manager(tmp_path, fleet)
    assert _state(restarted) == [(2, "b", True), (1, "a", False)]


async def test_inbox_watcher_task_runs_until_cancelled(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    inbox = tmp_path / "usb"
    m = _manager(tmp_path, fleet)
    watcher = InboxWatcher(m, inbox, poll_seconds=0.05)
    task = asyncio.create_task(watcher.run())
    archive = fleet.archive(fleet.sign(make_folder(tmp_path / "g", 1), "ops1"))
    await asyncio.sleep(0.1)
    (inbox / "r1.tar").write_bytes(archive.read_bytes())
    for _ in range(200):
        if (inbox / "done" / "r1.tar").exists():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _state(m) == [(1, "a", True)]
