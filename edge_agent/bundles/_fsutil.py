"""Durable file operations: atomic replace with fsync of the file and its directory."""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "remove_tree"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write-temp + fsync + rename + fsync(dir): after a crash the old or the new content."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove a file or folder without following links out of it, or opening a FIFO."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)  # unlinks what is inside without opening it
    else:
        path.unlink(missing_ok=True)
