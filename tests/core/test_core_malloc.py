"""The daemon caps glibc's malloc arenas, so threads that come and go stop growing its RSS."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from edge_agent._malloc import limit_malloc_arenas

_THREADS_THEN_STATS = """
import ctypes, sys, threading
from edge_agent._malloc import limit_malloc_arenas
if int(sys.argv[1]):
    assert limit_malloc_arenas(int(sys.argv[1]))
def work():
    for _ in range(200):
        held = [bytearray(4096) for _ in range(64)]  # above pymalloc's limit: glibc malloc
        del held
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def _arenas(limit: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _THREADS_THEN_STATS, str(limit)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return sum(line.startswith("Arena ") for line in proc.stderr.splitlines())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt and malloc_stats")
def test_threads_share_the_capped_arenas() -> None:
    assert _arenas(0) > 2  # glibc's default: a new arena for each new thread
    assert _arenas(2) <= 2


def test_zero_or_negative_leaves_malloc_alone() -> None:
    assert limit_malloc_arenas(0) is False
    assert limit_malloc_arenas(-3) is False
