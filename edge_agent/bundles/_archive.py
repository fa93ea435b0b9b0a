"""The bundle's transport form: one uncompressed tar, and a paranoid extractor.

Packing is deterministic (sorted names, zero owners and times, PAX format), so the same
folder always gives the same archive and the same sha256. Extraction never trusts the
archive: only regular files and folders, relative names without ``..``, each name once,
bounded sizes and counts, and bytes counted as they are written (a member cannot lie about
its size). Files are created with O_EXCL|O_NOFOLLOW into a folder that did not exist.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from edge_agent.bundles._fsutil import fsync_dir
from edge_agent.errors import BundleError

__all__ = ["ArchiveLimits", "pack_bundle", "unpack_bundle"]

_COPY_CHUNK = 1024 * 1024
_MAX_NAME = 1024
_MAX_COMPONENT = 255


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_total_bytes: int
    max_file_bytes: int
    max_files: int


def pack_bundle(folder: Path, out: Path) -> int:
    """Write ``folder`` (regular files only) to ``out``; returns the archive size."""
    files: list[tuple[str, Path]] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise BundleError(f"refusing to pack a symlink: {rel}")
        if path.is_dir():
            continue
        if not path.is_file():
            raise BundleError(f"refusing to pack a special file: {rel}")
        files.append((rel, path))
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in files:
            info = tarfile.TarInfo(rel)
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)
    return out.stat().st_size


def _check_name(name: str) -> PurePosixPath:
    if not name or len(name) > _MAX_NAME or "\x00" in name or "\\" in name:
        raise BundleError(f"archive member name refused: {name[:80]!r}")
    if name.startswith("/"):
        raise BundleError(f"archive member has an absolute path: {name[:80]!r}")
    parts = [p for p in name.split("/") if p != ""]
    if name.endswith("/"):
        name = name.rstrip("/")
    if any(p in ("..",) for p in parts):
        raise BundleError(f"archive member escapes the bundle: {name[:80]!r}")
    if any(p == "." for p in parts) or "//" in name or not parts:
        raise BundleError(f"archive member name is not canonical: {name[:80]!r}")
    if any(len(p) > _MAX_COMPONENT for p in parts):
        raise BundleError("archive member name component too long")
    return PurePosixPath(*parts)


def unpack_bundle(archive: Path, dest: Path, limits: ArchiveLimits) -> int:
    """Extract ``archive`` into the new folder ``dest``; returns the number of files."""
    # Never follow a link, never wait on a FIFO: only a regular file is read, from the
    # descriptor that was checked.
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BundleError("archive cannot be read") from exc
    with os.fdopen(fd, "rb") as raw:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError("archive is not a regular file")
        if st.st_size > limits.max_total_bytes + 1024 * (limits.max_files + 16):
            raise BundleError(f"archive larger than the limit of {limits.max_total_bytes} bytes")
        return _unpack(raw, dest, limits)


def _unpack(raw: BinaryIO, dest: Path, limits: ArchiveLimits) -> int:
    dest.mkdir(mode=0o755)  # must not exist: nothing pre-placed can be followed
    seen: set[PurePosixPath] = set()
    dirs: set[PurePosixPath] = {PurePosixPath(".")}
    regular: set[PurePosixPath] = set()
    total = 0
    files = 0
    try:
        with tarfile.open(fileobj=raw, mode="r:") as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                rel = _check_name(member.name)
                if rel in seen:
                    raise BundleError(f"archive has a duplicate member: {rel}")
                seen.add(rel)
                if len(seen) > limits.max_files:
                    raise BundleError(f"archive has more than {limits.max_files} entries")
                if member.issym() or member.islnk():
                    raise BundleError(f"archive member is a link: {rel}")
                if member.isdir():
                    _make_dirs(dest, rel, dirs, regular)
                    continue
                if not member.isreg() or member.issparse():
                    raise BundleError(f"archive member is not a regular file: {rel}")
                if member.size > limits.max_file_bytes:
                    raise BundleError(f"archive member too large: {rel}")
                total += member.size
                if total > limits.max_total_bytes:
                    raise BundleError(
                        f"archive content larger than the limit of {limits.max_total_bytes} bytes"
                    )
                if rel in dirs:
                    raise BundleError(f"archive uses a folder as a file: {rel}")
                if rel.parent != PurePosixPath("."):
                    _make_dirs(dest, rel.parent, dirs, regular)
                src = tar.extractfile(member)
                if src is None:
                    raise BundleError(f"archive member cannot be read: {rel}")
                regular.add(rel)
                _write_file(dest / rel, src, member.size)
                files += 1
    except BundleError:
        raise
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError("archive is truncated or not a valid tar archive") from exc
    except OSError as exc:
        raise BundleError(f"archive cannot be extracted ({exc.strerror or 'I/O error'})") from exc
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(dest / d)
    return files


def _make_dirs(
    dest: Path, rel: PurePosixPath, dirs: set[PurePosixPath], regular: set[PurePosixPath]
) -> None:
    for i in range(1, len(rel.parts) + 1):
        sub = PurePosixPath(*rel.parts[:i])
        if sub in dirs:
            continue
        if sub in regular:
            raise BundleError(f"archive uses a file as a folder: {sub}")
        os.mkdir(dest / sub, 0o755)  # fails on an existing file: no silent merge
        dirs.add(sub)


def _write_file(path: Path, src: object, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        written = 0
        read = src.read  # type: ignore[attr-defined]
        while True:
            chunk = read(min(_COPY_CHUNK, size - written + 1))
            if not chunk:
                break
            written += len(chunk)
            if written > size:
                raise BundleError(f"archive member longer than declared: {path.name}")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        if written != size:
            raise BundleError(f"archive is truncated inside {path.name}")
        os.fsync(fd)
    finally:
        os.close(fd)
