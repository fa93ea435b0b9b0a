"""Seal the engine worker off the network: it may not create an IP or packet socket at all.

The worker talks to the daemon over an inherited AF_UNIX socket pair and needs nothing else,
yet the onnxruntime wheels it loads carry telemetry that phones Microsoft (see
edge_agent/_offline.py). Switching that off by environment is the first line; this is the
second, enforced by the kernel whatever a library does: a seccomp filter, installed on every
thread before the model loads, makes ``socket(AF_INET | AF_INET6 | AF_PACKET, ...)`` fail
with EACCES and refuses io_uring (whose ring could open sockets without the syscall).

The filter is a classic BPF program built here (no libseccomp binding needed) for x86_64
and aarch64; elsewhere the worker logs that it runs unsealed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct

__all__ = ["NetsealUnavailable", "seal_network"]

# linux/filter.h, linux/seccomp.h, linux/audit.h
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_BPF_JA = 0x05
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_PR_SET_NO_NEW_PRIVS = 38
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16
_X32_SYSCALL_BIT = 0x40000000

# machine -> (AUDIT_ARCH_*, __NR_seccomp, syscalls refused outright, __NR_socket variants)
_ARCHES: dict[str, tuple[int, int, tuple[int, ...], tuple[int, ...]]] = {
    # io_uring_setup is 425 on both; x86_64 also has the x32 ABI's socket number.
    "x86_64": (0xC000003E, 317, (425,), (41, _X32_SYSCALL_BIT | 41)),
    "aarch64": (0xC00000B7, 277, (425,), (198,)),
}
_DENIED_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_PACKET)


class NetsealUnavailable(OSError):
    """This machine or kernel cannot install the filter."""


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _program(arch: int, refused: tuple[int, ...], socket_nrs: tuple[int, ...]) -> list[bytes]:
    """The BPF instructions. Layout (jump offsets count from the next instruction)::

    0  load arch;  1  foreign arch -> ALLOW;  2  load syscall nr
       refused syscall -> DENY ...;  socket syscall -> FAMILY ...;  otherwise -> ALLOW
    FAMILY: load arg0;  AF_INET / AF_INET6 / AF_PACKET -> DENY ...
    ALLOW;  DENY
    """
    r, s, f = len(refused), len(socket_nrs), len(_DENIED_FAMILIES)
    family_at = 4 + r + s
    allow_at = family_at + 1 + f
    deny_at = allow_at + 1
    program = [
        _insn(_BPF_LD_W_ABS, _OFFSET_ARCH),
        _insn(_BPF_JEQ_K, arch, jt=0, jf=allow_at - 2),
        _insn(_BPF_LD_W_ABS, _OFFSET_NR),
    ]
    for nr in refused:
        program.append(_insn(_BPF_JEQ_K, nr, jt=deny_at - len(program) - 1))
    for nr in socket_nrs:
        program.append(_insn(_BPF_JEQ_K, nr, jt=family_at - len(program) - 1))
    program.append(_insn(_BPF_JA, allow_at - len(program) - 1))
    program.append(_insn(_BPF_LD_W_ABS, _OFFSET_ARG0))
    for family in _DENIED_FAMILIES:
        program.append(_insn(_BPF_JEQ_K, family, jt=deny_at - len(program) - 1))
    program.append(_insn(_BPF_RET_K, _SECCOMP_RET_ALLOW))
    program.append(_insn(_BPF_RET_K, _SECCOMP_RET_ERRNO | errno.EACCES))
    assert len(program) == deny_at + 1
    return program


def seal_network() -> None:
    """Install the filter on every thread of this process; raises NetsealUnavailable."""
    machine = platform.machine()
    if machine not in _ARCHES:
        raise NetsealUnavailable(errno.ENOSYS, f"no seccomp program for {machine}")
    arch, seccomp_nr, refused, socket_nrs = _ARCHES[machine]
    raw = b"".join(_program(arch, refused, socket_nrs))
    count = len(raw) // ctypes.sizeof(_SockFilter)
    filters = (_SockFilter * count).from_buffer_copy(raw)
    prog = _SockFprog(count, filters)
    libc = ctypes.CDLL(None, use_errno=True)
    # Required to install a filter without CAP_SYS_ADMIN; systemd's unit sets it anyway.
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise NetsealUnavailable(err, f"prctl(NO_NEW_PRIVS): {os.strerror(err)}")
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(
        ctypes.c_long(seccomp_nr),
        ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(_SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(prog),
    )
    if result != 0:
        err = ctypes.get_errno()
        raise NetsealUnavailable(err, f"seccomp(SET_MODE_FILTER): {os.strerror(err)}")
