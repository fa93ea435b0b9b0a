"""Issue 15: the USB inbox (and the upload folder) never block on a file; only complete
files are taken."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from bundle_fixtures import FileHost, Fleet, make_folder, small_config

from edge_agent.audit import AuditLog
from edge_agent.bundles import BundleManager, InboxWatcher, UploadHeader
from edge_agent.bundles._inbox import copy_regular_file, run_bounded
from edge_agent.errors import EdgeAgentError


def _box(tmp: Path, **cfg: object) -> tuple[BundleManager, Fleet, Path]:
    fleet = Fleet(tmp / "fleet")
    audit = AuditLog(tmp / "audit.sqlite3")
    m = BundleManager(small_config(**cfg), state_dir=tmp / "state", host=FileHost(), audit=audit)
    fleet.trust(m.trust.path, "ops1")
    m.recover()
    inbox = tmp / "usb"
    inbox.mkdir()
    return m, fleet, inbox


def _signed(fleet: Fleet, tmp: Path, release: int) -> bytes:
    return fleet.archive(fleet.sign(make_folder(tmp / f"g{release}", release), "ops1")).read_bytes()


def _active(m: BundleManager) -> list[int]:
    return [b.release for b in m.list_bundles() if b.active]


async def test_a_fifo_in_the_inbox_is_rejected_without_blocking(tmp_path: Path) -> None:
    m, fleet, inbox = _box(tmp_path)
    watcher = InboxWatcher(m, inbox, poll_seconds=0.1)
    os.mkfifo(inbox / "evil.tar")
    (inbox / "good.tar").write_bytes(_signed(fleet, tmp_path, 1))
    async with asyncio.timeout(20):  # the old watcher waited here for ever
        first = await watcher.scan_once()
        second = await watcher.scan_once()
    assert first == [("evil.tar", "not a regular file")]
    assert second == [("good.tar", "activated")]
    assert stat.S_ISFIFO((inbox / "rejected" / "evil.tar").lstat().st_mode)  # moved, not opened
    assert (inbox / "rejected" / "evil.tar.reason.txt").read_text() == "not a regular file\n"
    assert _active(m) == [1]
    log = AuditLog(tmp_path / "audit.sqlite3")
    rejected = [r for r in log.records() if r.data_class == "inbox_rejected"]
    log.close()
    assert [(r.client_id, r.reason) for r in rejected] == [
        ("inbox", "evil.tar: not a regular file")
    ]


def test_a_fifo_or_link_swapped_in_after_listing_is_refused_at_open(tmp_path: Path) -> None:
    fifo = tmp_path / "swapped.tar"
    os.mkfifo(fifo)
    link = tmp_path / "link.tar"
    link.symlink_to("/etc/passwd")
    for source, message in ((fifo, "not a regular file"), (link, "cannot be opened")):
        dest = tmp_path / f"copy-of-{source.name}"
        with pytest.raises(EdgeAgentError, match=message):
            copy_regular_file(source, dest, max_bytes=1 << 20, abandoned=threading.Event())
        assert not dest.exists()


async def test_a_read_that_hangs_is_abandoned_and_never_joined(tmp_path: Path) -> None:
    m, fleet, inbox = _box(tmp_path)
    watcher = InboxWatcher(m, inbox, poll_seconds=0.05)
    read_end, write_end = os.pipe()  # nothing is ever written: os.read blocks in the kernel
    try:
        started = time.monotonic()
        with pytest.raises(EdgeAgentError, match=r"copy did not finish within 0\.3 s"):
            await run_bounded(lambda: os.read(read_end, 1), 0.3, "copy")
        assert time.monotonic() - started < 10
        stuck = [t for t in threading.enumerate() if t.name == "inbox-copy"]
        assert stuck and all(t.daemon for t in stuck)  # cannot hold the process at exit
        # The watcher starts no second read while one hangs: one stuck thread per medium.
        with pytest.raises(EdgeAgentError, match="did not finish"):
            await watcher._bounded(lambda: os.read(read_end, 1), 0.3, "copy")
        for _ in range(3):
            with pytest.raises(EdgeAgentError, match="inbox medium is not answering"):
                await watcher.scan_once()
        assert len([t for t in threading.enumerate() if t.name.startswith("inbox-")]) == 2
        # Meanwhile the installer is free: nothing held its lock.
        (tmp_path / "r1.tar").write_bytes(_signed(fleet, tmp_path, 1))
        await m.install_archive(tmp_path / "r1.tar")
        assert _active(m) == [1]
        os.write(write_end, b"xx")  # the medium answers again
        for t in threading.enumerate():
            if t.name == "inbox-copy":
                t.join(5)
        assert await watcher.scan_once() == []
    finally:
        os.write(write_end, b"x")  # let the stuck thread go before the test ends
        os.close(write_end)
        for t in threading.enumerate():
            if t.name == "inbox-copy":
                t.join(5)
        os.close(read_end)


async def test_a_copy_that_pauses_is_waited_for_not_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m, fleet, inbox = _box(tmp_path)
    watcher = InboxWatcher(m, inbox, poll_seconds=0.05)
    data = _signed(fleet, tmp_path, 1)
    target = inbox / "slow.tar"
    target.write_bytes(data[: len(data) // 2])
    # The writer stalls for several poll intervals: size and mtime hold still.
    for _ in range(4):
        assert await watcher.scan_once() == []
        await asyncio.sleep(0.06)
    assert target.exists()
    assert not (inbox / "rejected").joinpath("slow.tar").exists()
    assert sum("no tar end marker yet" in r.getMessage() for r in caplog.records) == 1
    with target.open("ab") as f:
        f.write(data[len(data) // 2 :])
    results: list[tuple[str, str]] = []
    for _ in range(3):
        results += await watcher.scan_once()
    assert results == [("slow.tar", "activated")]
    assert (inbox / "done" / "slow.tar").is_file()
    assert _active(m) == [1]


async def test_write_then_rename_is_taken_once_renamed(tmp_path: Path) -> None:
    m, fleet, inbox = _box(tmp_path)
    watcher = InboxWatcher(m, inbox, poll_seconds=0.05)
    partial = inbox / "r1.tar.partial"
    partial.write_bytes(_signed(fleet, tmp_path, 1))
    assert await watcher.scan_once() == []
    assert await watcher.scan_once() == []  # never taken under its temporary name
    partial.rename(inbox / "r1.tar")
    assert await watcher.scan_once() == []
    assert await watcher.scan_once() == [("r1.tar", "activated")]


async def test_a_stale_reason_goes_when_its_file_was_taken_back(tmp_path: Path) -> None:
    m, fleet, inbox = _box(tmp_path)
    watcher = InboxWatcher(m, inbox, poll_seconds=0.05)
    bad = fleet.archive(fleet.sign(make_folder(tmp_path / "b", 1), "rogue")).read_bytes()
    (inbox / "x.tar").write_bytes(bad)
    await watcher.scan_once()
    assert "unknown-key" in dict(await watcher.scan_once())["x.tar"]
    reason = inbox / "rejected" / "x.tar.reason.txt"
    assert reason.is_file()
    # The operator takes the refused file away and drops the fixed one under the same name.
    (inbox / "rejected" / "x.tar").unlink()
    (inbox / "x.tar").write_bytes(_signed(fleet, tmp_path, 1))
    await watcher.scan_once()
    assert await watcher.scan_once() == [("x.tar", "activated")]
    assert not reason.exists()


async def test_an_oversized_inbox_file_is_refused_while_copying(tmp_path: Path) -> None:
    m, _fleet, inbox = _box(tmp_path, max_bundle_bytes=4096)
    watcher = InboxWatcher(m, inbox, poll_seconds=0.05)
    (inbox / "big.tar").write_bytes(b"\0" * (2 << 20))
    await watcher.scan_once()
    assert await watcher.scan_once() == [("big.tar", "larger than the limit of 225280 bytes")]
    assert not any(m.store.staging.iterdir())  # no partial copy left behind


async def test_a_fifo_in_place_of_an_upload_or_archive_does_not_block(tmp_path: Path) -> None:
    m, _fleet, _inbox = _box(tmp_path)
    m.store.ensure()
    os.mkfifo(m.store.uploads / "u1.part")  # planted where the next chunk would be appended
    header = UploadHeader("u1", 4096, "ab" * 32)
    async with asyncio.timeout(20):
        session = await asyncio.to_thread(m.uploads.open, header)  # the FIFO is removed
        session.close()
        assert (m.store.uploads / "u1.part").is_file()
        os.mkfifo(tmp_path / "fifo.tar")
        with pytest.raises(EdgeAgentError, match="archive is not a regular file"):
            await m.install_archive(tmp_path / "fifo.tar")
        # Leftovers that are FIFOs (planted, or a crashed copy) never stall start-up cleanup.
        os.mkfifo(m.store.staging / "left-behind")
        os.mkfifo(m.store.trash / "left-behind")
        await asyncio.to_thread(m.recover)
        assert not any(m.store.staging.iterdir()) and not any(m.store.trash.iterdir())
