"""Crash-safe writes of small state files (signed policy, sealed envelope, device key).

A reader after a power cut sees either the old file or the new one, never a torn mix:
write a temporary file beside the target, fsync it, rename over the target, fsync the folder.

A writer killed between creating its temporary file and the rename leaves that file behind
(for the device key: a copy of the secret). Temporary names carry the writer's pid, and each
write removes the temporaries of writers that no longer run, so power cuts do not pile up
files.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes", "create_exclusive_bytes", "fsync_dir"]


def fsync_dir(folder: Path) -> None:
    """Make a rename or create inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _sweep_dead_writers(target: Path) -> None:
    """Remove ``target``'s temporary files whose writer process is gone (killed mid-write)."""
    prefix = f".{target.name}."
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid, _, _ = leftover.name[len(prefix) : -len(".tmp")].partition(".")
        if pid.isdigit() and not _writer_alive(int(pid)):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _write_temp(target: Path, data: bytes, mode: int) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _sweep_dead_writers(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never follow or reuse a file somebody planted at the temp name.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # umask must not widen or narrow what we asked for
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    return tmp


def atomic_write_bytes(target: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``target`` with ``data`` atomically and durably."""
    tmp = _write_temp(target, data, mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def create_exclusive_bytes(target: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``target`` with ``data`` only if it does not exist yet.

    Returns False when another process created it first (its content wins). ``link`` is the
    atomic create-if-absent of a complete file; a plain O_EXCL open would expose a
    half-written file to a concurrent reader.
    """
    tmp = _write_temp(target, data, mode)
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(target.parent)
    return True
