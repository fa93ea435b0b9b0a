"""Resumable upload receiver: one partial file per upload id, size and sha256 enforced.

``<uploads>/<id>.part`` holds the bytes received so far (its length is the resume offset)
and ``<id>.json`` the declared total size and digest; a resumed stream must declare the
same. The digest is checked over the whole file at the end, so a resumed upload is as
trustworthy as a single one. The free-space check covers the rest of the upload plus its
extraction plus a margin before any byte is staged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.bundles._fsutil import atomic_write, remove_tree
from edge_agent.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable

__all__ = ["UploadHeader", "UploadReceiver", "UploadSession"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class UploadHeader:
    upload_id: str
    total_size: int
    sha256: str
    offset: int = 0


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class UploadReceiver:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        chunk_limit: int,
        free_space_margin: int,
        free_bytes: Callable[[Path], int] = _free_bytes,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.chunk_limit = chunk_limit
        self.free_space_margin = free_space_margin
        self._free_bytes = free_bytes
        # One open stream per upload id: a dropped stream's handler may still be writing.
        self._open_ids: set[str] = set()

    def _paths(self, upload_id: str) -> tuple[Path, Path]:
        if not _ID_RE.match(upload_id):
            raise InvalidArgument("upload_id", "must be 1-128 of [A-Za-z0-9._-]")
        return self.directory / f"{upload_id}.part", self.directory / f"{upload_id}.json"

    def offset(self, upload_id: str) -> int:
        """Bytes already received for ``upload_id`` (0 when unknown)."""
        part, _ = self._paths(upload_id)
        try:
            return part.stat().st_size
        except FileNotFoundError:
            return 0

    def open(self, header: UploadHeader) -> UploadSession:
        part, meta = self._paths(header.upload_id)
        if header.upload_id in self._open_ids:
            raise Unavailable("the previous stream of this upload is still closing; retry")
        if header.total_size <= 0:
            raise InvalidArgument("total_size", "must be declared and > 0")
        if header.total_size > self.max_bytes:
            raise InvalidArgument("total_size", f"exceeds the limit of {self.max_bytes} bytes")
        digest = header.sha256.lower()
        if not _HEX64.match(digest):
            raise InvalidArgument("sha256", "must be 64 hex digits")
        self.directory.mkdir(parents=True, exist_ok=True)
        if part.is_symlink() or (part.exists() and not part.is_file()):
            remove_tree(part)  # not something we wrote (a link, a FIFO): never open it
        declared = json.dumps({"total_size": header.total_size, "sha256": digest}).encode()
        current = self.offset(header.upload_id)
        if header.offset == 0 and current:
            remove_tree(part)  # an explicit restart
            current = 0
        if current and meta.exists() and meta.read_bytes() != declared:
            raise FailedPrecondition("upload_id resumes an upload of a different archive")
        if header.offset != current:
            raise FailedPrecondition(
                f"upload resumes at offset {current}, the stream said {header.offset}"
            )
        remaining = header.total_size - current
        # The rest of the upload + the extracted copy + the margin must fit.
        needed = remaining + header.total_size + self.free_space_margin
        free = self._free_bytes(self.directory)
        if free < needed:
            raise ResourceExhausted(f"not enough disk space: {needed} bytes needed, {free} free")
        if not current:
            atomic_write(meta, declared)
        fd = _open_regular(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._open_ids.add(header.upload_id)
        return UploadSession(self, header.upload_id, fd, current, header.total_size, digest)

    def discard(self, upload_id: str) -> None:
        for p in self._paths(upload_id):
            p.unlink(missing_ok=True)

    def cleanup_stale(self, max_age_seconds: float, *, now: float | None = None) -> int:
        """Drop partial uploads untouched for ``max_age_seconds``; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        if not self.directory.is_dir():
            return 0
        for p in self.directory.iterdir():
            try:
                if now - p.stat().st_mtime > max_age_seconds:
                    remove_tree(p)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _open_regular(path: Path, flags: int) -> int:
    """Open without following a link or waiting on a FIFO; only a regular file is kept."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise FailedPrecondition("the partial upload cannot be opened; restart it") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FailedPrecondition("the partial upload is not a regular file; restart it")
    return fd


class UploadSession:
    """One open stream into a partial upload; ``finish`` checks size and digest."""

    def __init__(
        self,
        receiver: UploadReceiver,
        upload_id: str,
        fd: int,
        offset: int,
        total: int,
        sha256: str,
    ) -> None:
        self._receiver = receiver
        self.upload_id = upload_id
        self._fd: int | None = fd
        self.offset = offset
        self.total = total
        self._sha256 = sha256
        # A cancelled RPC may close while a write still runs in its worker thread.
        self._lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        if self._fd is None:
            raise FailedPrecondition("upload stream is closed")
        if len(chunk) > self._receiver.chunk_limit:
            raise InvalidArgument("chunk", f"larger than {self._receiver.chunk_limit} bytes")
        if self.offset + len(chunk) > self.total:
            raise InvalidArgument("chunk", f"upload exceeds its declared size of {self.total}")
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]
        self.offset += len(chunk)

    def close(self) -> None:
        """Keep what arrived (fsynced) so the client can resume."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
                os.close(self._fd)
            finally:
                self._fd = None
                self._receiver._open_ids.discard(self.upload_id)

    def finish(self) -> Path:
        """Check size and digest; return the complete archive (the caller consumes it)."""
        self.close()
        part, meta = self._receiver._paths(self.upload_id)
        if self.offset != self.total:
            raise InvalidArgument(
                "chunk", f"upload truncated: {self.offset} of {self.total} bytes received"
            )
        h = hashlib.sha256()
        with os.fdopen(_open_regular(part, os.O_RDONLY), "rb") as f:
            while block := f.read(_HASH_CHUNK):
                h.update(block)
        if h.hexdigest() != self._sha256:
            self._receiver.discard(self.upload_id)  # resuming a corrupt file cannot help
            raise InvalidArgument("sha256", "the received archive does not match its digest")
        done = part.with_suffix(".tar")
        os.replace(part, done)
        meta.unlink(missing_ok=True)
        return done
