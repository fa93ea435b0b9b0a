"""glibc malloc tuning for a daemon that lives for months.

glibc gives each new thread that contends for the heap an arena of its own, up to eight per
core, and keeps what an arena once held. The daemon's threads come and go (hashing a
bundle, grpcio's pollers, fsync helpers), so each bundle activation left 1-2 MiB more
resident, rising without a ceiling in sight over eight activations (docs/RELIABILITY.md).
With two arenas it stopped rising after the fourth. The daemon's hot path is one event
loop, so two arenas cost it no contention worth measuring.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "THP_ENABLED",
    "glibc_reads_hugetlb",
    "huge_page_malloc",
    "huge_page_malloc_applies",
    "limit_malloc_arenas",
    "release_free_heap",
    "transparent_huge_pages_mode",
]

_log = logging.getLogger(__name__)
_M_ARENA_MAX = -8  # from glibc's <malloc.h>
_TUNABLES = "GLIBC_TUNABLES"
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_HUGE_PAGES = "glibc.malloc.hugetlb"


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc's arenas for threads started from now on; False where that is not possible."""
    if count <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the libc this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_ARENA_MAX, count))
    if not done:
        _log.debug("this libc refused M_ARENA_MAX; malloc arenas are left as they are")
    return done


def release_free_heap() -> bool:
    """Give the heap's free pages back to the OS (glibc keeps them by default).

    Loading a model leaves large transient buffers freed but resident: parsing a 131k-token
    Tekken tokenizer.json peaks ~150 MiB above what the tokenizer keeps (~55 MiB).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))


def huge_page_malloc(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` in which glibc's malloc asks for transparent huge pages for its heap
    and the blocks it maps (``glibc.malloc.hugetlb=1``: madvise(MADV_HUGEPAGE)).

    For the engine worker: without onnxruntime's arena each step allocates its activations
    afresh, and blocks above the mmap threshold come from new mappings, every 4 KiB page
    faulted in and zeroed (81,000 faults in a 512-token prefill of the real-shape copy, ~4,000
    with huge pages; docs/BENCHMARKS.md). Freed blocks still go back to the system. glibc
    before 2.35 and other libcs ignore the tunable; an operator's own choice is kept.
    """
    out = dict(env)
    if _HUGE_PAGES in _tunables(env):
        return out
    current = out.get(_TUNABLES, "")
    out[_TUNABLES] = f"{current}:{_HUGE_PAGES}=1" if current else f"{_HUGE_PAGES}=1"
    return out


def _tunables(env: Mapping[str, str]) -> dict[str, str]:
    """``GLIBC_TUNABLES`` of ``env`` by name (``a.b=1:c.d=2``; a bare name reads as "")."""
    items = (item.partition("=") for item in env.get(_TUNABLES, "").split(":") if item)
    return {name: value for name, _, value in items}


def glibc_reads_hugetlb(libc: tuple[str, str] | None = None) -> bool:
    """Whether this libc knows ``glibc.malloc.hugetlb`` (glibc 2.35+)."""
    name, version = libc if libc is not None else platform.libc_ver()
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return name == "glibc" and parts >= (2, 35)


def transparent_huge_pages_mode(enabled: Path = THP_ENABLED) -> str:
    """The kernel's THP mode (``always``, ``madvise``, ``never``); "" without THP."""
    try:
        text = enabled.read_text()
    except OSError:
        return ""
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else ""


def huge_page_malloc_applies(env: Mapping[str, str]) -> bool:
    """Whether a process started with ``env`` gets its malloc'd memory madvised for huge
    pages: glibc 2.35+ with the tunable on, and the kernel's THP mode ``madvise`` (with
    ``always`` the kernel gives huge pages unasked and glibc leaves it be; with ``never`` or
    no THP there are none)."""
    return (
        _tunables(env).get(_HUGE_PAGES) == "1"
        and glibc_reads_hugetlb()
        and transparent_huge_pages_mode() == "madvise"
    )
