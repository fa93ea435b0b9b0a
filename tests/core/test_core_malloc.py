"""glibc malloc tuning: the daemon caps its arenas, so threads that come and go stop growing
its RSS; the engine worker asks for transparent huge pages for the blocks malloc maps."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from edge_agent._malloc import huge_page_malloc, huge_page_malloc_applies, limit_malloc_arenas

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


def test_huge_pages_join_the_operators_tunables_and_keep_their_choice() -> None:
    assert huge_page_malloc({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    mixed = huge_page_malloc({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"})
    assert mixed == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "A": "b"}
    theirs = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"}
    assert huge_page_malloc(theirs) == theirs


# A block above glibc's mmap threshold gets a mapping of its own; glibc with the tunable
# madvises it MADV_HUGEPAGE, which the kernel shows as "hg" in that mapping's VmFlags.
_MAP_AND_LOOK = """
import ctypes, sys
size = 64 << 20
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
addr = libc.malloc(size)
flags, inside = "", False
for line in open("/proc/self/smaps"):
    head = line.split()
    if "-" in head[0] and ":" not in head[0]:
        lo, hi = (int(x, 16) for x in head[0].split("-"))
        inside = lo <= addr < hi
    elif inside and head[0] == "VmFlags:":
        flags = " ".join(head[1:])
print(flags)
"""


def _flags_of_a_large_block(env: dict[str, str]) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _MAP_AND_LOOK],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(proc.stdout.split())


@pytest.mark.skipif(
    not huge_page_malloc_applies(huge_page_malloc({})),
    reason="needs glibc 2.35+ and transparent huge pages in madvise mode",
)
def test_glibc_asks_for_huge_pages_for_the_blocks_it_maps() -> None:
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert "hg" not in _flags_of_a_large_block(plain)
    flags = _flags_of_a_large_block(huge_page_malloc(plain))
    assert "hg" in flags and "rd" in flags  # the block's own mapping, found and marked


def test_huge_pages_apply_only_with_the_tunable_on() -> None:
    assert not huge_page_malloc_applies({})
    assert not huge_page_malloc_applies({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
