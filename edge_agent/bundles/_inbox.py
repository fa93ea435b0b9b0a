"""Air-gap import: poll a folder (a USB stick's mount or a copy target) for ``*.tar`` bundles.

The inbox is hostile ground: anyone with the stick chose what lies there, and the medium
may hang. So nothing here ever blocks the daemon:

- every touch of the inbox (listing, opening, copying, moving) runs in a daemon thread under
  a time limit; a read stuck on a dead device is abandoned, never joined, and cannot hold
  up shutdown or any install;
- a file is opened with ``O_NOFOLLOW|O_NONBLOCK`` and taken only if ``fstat`` of that very
  descriptor says it is a regular file (a FIFO or link swapped in after listing is refused,
  not waited on), then copied from that descriptor into private storage; only the copy goes
  to the installer, and the manager's lock is never held while the inbox is read.

A file is taken when it is complete: it ends with the tar end-of-archive marker and its size
and mtime held still for one poll interval. Writers that may pause should copy to a name
that does not end in ``.tar`` (``x.tar.partial``) and rename it when done; a ``.tar`` that
lacks the end marker is treated as still being written and left in place. Installed files
go to ``done/``; refused ones to ``rejected/`` with ``<name>.reason.txt`` beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edge_agent.bundles._manager import BundleManager
from edge_agent.errors import BundleError, EdgeAgentError

__all__ = ["InboxWatcher", "copy_regular_file", "run_bounded"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CHUNK = 1024 * 1024
_TAR_END = b"\0" * 1024  # two zero blocks close every tar archive
_FS_TIMEOUT_S = 30.0  # listing, moving, writing a reason: metadata work, seconds at most


class InboxTimeout(BundleError):
    """An inbox operation did not finish in time (a hung medium or a stalled writer)."""

    def __init__(self, message: str, thread: threading.Thread | None = None) -> None:
        super().__init__(message)
        self.thread = thread  # still stuck in the kernel, abandoned


async def run_bounded(fn: Callable[[], _T], timeout: float, what: str) -> _T:
    """Run ``fn`` in a daemon thread; give up on it after ``timeout`` seconds.

    Not the loop's executor: its threads are joined at exit, so one read stuck in the
    kernel would keep the process alive after SIGTERM.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def settle(value: _T | None, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(value)  # type: ignore[arg-type]

    def body() -> None:
        value: _T | None = None
        error: BaseException | None = None
        try:
            value = fn()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, value, error)

    thread = threading.Thread(target=body, name=f"inbox-{what}", daemon=True)
    thread.start()
    try:
        async with asyncio.timeout(timeout):
            return await done
    except TimeoutError as exc:
        raise InboxTimeout(f"{what} did not finish within {timeout:g} s", thread) from exc


def copy_regular_file(
    source: Path, dest: Path, *, max_bytes: int, abandoned: threading.Event
) -> tuple[int, int]:
    """Copy ``source`` (a regular file, never followed) to the new file ``dest``.

    Returns the source's (size, mtime_ns) as seen at open; raises BundleError when it is
    not a regular file, grows past ``max_bytes`` or changed while being copied.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(source, flags)
    except OSError as exc:
        raise BundleError(f"cannot be opened ({exc.strerror or 'I/O error'})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError("not a regular file")
        if st.st_size > max_bytes:
            raise BundleError(f"larger than the limit of {max_bytes} bytes")
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            copied = 0
            while chunk := os.read(fd, _CHUNK):
                if abandoned.is_set():
                    raise BundleError("copy abandoned")
                copied += len(chunk)
                if copied > max_bytes:
                    raise BundleError(f"larger than the limit of {max_bytes} bytes")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            os.fsync(out)
        except BaseException:
            os.close(out)
            dest.unlink(missing_ok=True)
            raise
        os.close(out)
        after = os.fstat(fd)
        if copied != st.st_size or (after.st_size, after.st_mtime_ns) != (
            st.st_size,
            st.st_mtime_ns,
        ):
            dest.unlink(missing_ok=True)
            raise _StillWriting()
        return st.st_size, st.st_mtime_ns
    finally:
        os.close(fd)


class _StillWriting(BundleError):
    def __init__(self) -> None:
        super().__init__("the file is still being written")


def _has_tar_end(path: Path) -> bool:
    size = path.stat().st_size
    if size < len(_TAR_END) or size % 512:
        return False
    with path.open("rb") as f:
        f.seek(size - len(_TAR_END))
        return f.read() == _TAR_END


class InboxWatcher:
    def __init__(
        self,
        manager: BundleManager,
        inbox: Path,
        *,
        poll_seconds: float,
        copy_timeout_s: float | None = None,
    ) -> None:
        self._manager = manager
        self.inbox = inbox
        self.done = inbox / "done"
        self.rejected = inbox / "rejected"
        self._poll = poll_seconds
        self._copy_timeout = copy_timeout_s or manager.config.inbox_copy_timeout_seconds
        self._last_seen: dict[str, tuple[int, int]] = {}
        # Files found incomplete, by (size, mtime): retried when they change, logged once.
        self._incomplete: dict[str, tuple[int, int]] = {}
        # A read that hung and was abandoned: no new one starts until it returns, so a
        # dead medium costs one stuck thread, not one per poll.
        self._stuck: threading.Thread | None = None

    async def run(self) -> None:
        """Poll until cancelled; one failing scan never stops the watcher."""
        while True:
            try:
                await self.scan_once()
            except EdgeAgentError as exc:
                _log.error("inbox scan failed: %s", exc.message)
            except Exception:
                _log.exception("inbox scan failed")
            await asyncio.sleep(self._poll)

    def _list(self) -> list[tuple[str, os.stat_result]]:
        for d in (self.inbox, self.done, self.rejected):
            d.mkdir(parents=True, exist_ok=True)
        for reason in self.rejected.glob("*.tar.reason.txt"):
            # The file it explained was moved back (and maybe installed since): drop it.
            if not reason.with_name(reason.name.removesuffix(".reason.txt")).exists():
                reason.unlink(missing_ok=True)
        found = []
        with os.scandir(self.inbox) as it:
            for entry in it:
                if entry.name.endswith(".tar") and not entry.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        found.append((entry.name, entry.stat(follow_symlinks=False)))
        return sorted(found)

    async def _bounded(self, fn: Callable[[], _T], timeout: float, what: str) -> _T:
        if self._stuck is not None:
            if self._stuck.is_alive():
                raise InboxTimeout("the inbox medium is not answering (an earlier read hangs)")
            self._stuck = None
        try:
            return await run_bounded(fn, timeout, what)
        except InboxTimeout as exc:
            self._stuck = exc.thread
            raise

    async def scan_once(self) -> list[tuple[str, str]]:
        """Process every settled ``*.tar``; returns ``(file name, outcome or reason)``."""
        results: list[tuple[str, str]] = []
        current: dict[str, tuple[int, int]] = {}
        entries = await self._bounded(self._list, _FS_TIMEOUT_S, "listing")
        listed = {name for name, _ in entries}
        for name, st in entries:
            path = self.inbox / name
            if not stat.S_ISREG(st.st_mode):
                await self._reject(path, "not a regular file")
                results.append((name, "not a regular file"))
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self._incomplete.get(name) == sig:
                continue  # unchanged since found incomplete: still waiting for the writer
            current[name] = sig
            if self._last_seen.get(name) != sig:
                continue  # still being copied, or first sight: wait one interval
            del current[name]
            outcome = await self._process(path, sig)
            if outcome is not None:
                results.append((name, outcome))
        self._last_seen = current
        self._incomplete = {k: v for k, v in self._incomplete.items() if k in listed}
        return results

    async def _process(self, path: Path, sig: tuple[int, int]) -> str | None:
        """Copy, then install; None when the file turned out not to be complete yet."""
        store = self._manager.store
        config = self._manager.config
        # The archive may exceed its content by tar headers: the same slack unpacking allows.
        max_bytes = config.max_bundle_bytes + 1024 * (config.max_files + 16)
        await asyncio.to_thread(store.ensure)
        copy = store.staging / f"inbox-{uuid.uuid4().hex}.tar"
        abandoned = threading.Event()
        try:
            await self._bounded(
                lambda: copy_regular_file(
                    path,
                    copy,
                    max_bytes=max_bytes,
                    abandoned=abandoned,
                ),
                self._copy_timeout,
                "copy",
            )
            complete = await asyncio.to_thread(_has_tar_end, copy)
        except _StillWriting:
            return None
        except EdgeAgentError as exc:
            abandoned.set()
            await asyncio.to_thread(copy.unlink, missing_ok=True)
            await self._reject(path, exc.message)
            return exc.message
        except BaseException:
            abandoned.set()
            with contextlib.suppress(OSError):
                copy.unlink(missing_ok=True)
            raise
        if not complete:
            await asyncio.to_thread(copy.unlink, missing_ok=True)
            if path.name not in self._incomplete:
                _log.warning(
                    "inbox: %s has no tar end marker yet; waiting for the writer to finish",
                    path.name,
                )
            self._incomplete[path.name] = sig
            return None
        self._incomplete.pop(path.name, None)
        try:
            result = await self._manager.install_archive(
                copy, consume=True, source="inbox", name=path.name
            )
        except EdgeAgentError as exc:
            await self._reject(path, exc.message)
            return exc.message
        except Exception:
            _log.exception("inbox: %s failed", path.name)
            await self._reject(path, "internal error (see the daemon log)")
            return "internal error"
        await self._bounded(lambda: self._move(path, self.done, None), _FS_TIMEOUT_S, "move")
        return result.outcome

    async def _reject(self, path: Path, reason: str) -> None:
        await self._manager.events.record(
            "inbox_rejected", f"{path.name}: {reason}", source="inbox"
        )
        try:
            await self._bounded(
                lambda: self._move(path, self.rejected, reason), _FS_TIMEOUT_S, "move"
            )
        except EdgeAgentError as exc:
            _log.error("inbox: %s could not be moved to rejected/: %s", path.name, exc.message)

    def _move(self, path: Path, folder: Path, reason: str | None) -> None:
        target = folder / path.name
        if target.exists() or target.is_symlink():
            stem = path.name.removesuffix(".tar")
            target = folder / f"{stem}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.tar"
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)  # a rename: never opens (or blocks on) what it moves
        if reason is not None:
            note = target.with_name(target.name + ".reason.txt")
            fd = os.open(
                note, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644
            )
            with os.fdopen(fd, "w") as f:
                f.write(reason + "\n")
