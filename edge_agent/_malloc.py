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
import sys

__all__ = ["limit_malloc_arenas", "release_free_heap"]

_log = logging.getLogger(__name__)
_M_ARENA_MAX = -8  # from glibc's <malloc.h>


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
