"""The daemon's own air gap: while it is set, Python code in this process cannot reach out.

Routing already never picks the cloud when the policy is air-gapped; this is the second line,
for code paths nobody thought of (a library's update check, a stray DNS lookup). A
``sys.addaudithook`` hook sees every ``socket.connect``, ``socket.sendto`` and name lookup
made through Python's socket module, in every thread, and refuses with EACCES:

- connections and datagrams to anything but loopback, link-local and multicast addresses
  (mDNS answers on the LAN go out from port 5353 and stay allowed: that is LAN discovery,
  not egress);
- name lookups, except of literal addresses that would be allowed and ``localhost``;
  reverse lookups always.

The engine worker, where onnxruntime's C++ telemetry lives, is sealed by seccomp instead
(engine/_netseal.py): C code never passes through these hooks. An audit hook cannot be
removed, so the hook is installed once per process and follows :func:`set_air_gap`; several
agents in one process (tests) each hold the gap until they lift it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import sys
import threading
from typing import Any

__all__ = ["EgressRefused", "air_gap_holders", "set_air_gap"]

_log = logging.getLogger("edge_agent.egress")
_MDNS_PORT = 5353

_lock = threading.Lock()
_holders: set[int] = set()
_installed = False


class EgressRefused(PermissionError):
    """An outbound connection or lookup while the box is air-gapped."""


def air_gap_holders() -> int:
    return len(_holders)


def set_air_gap(owner: object, sealed: bool) -> None:
    """``owner`` (an agent) holds the air gap, or lifts its hold."""
    global _installed
    with _lock:
        if sealed:
            _holders.add(id(owner))
            if not _installed:
                sys.addaudithook(_hook)
                _installed = True
        else:
            _holders.discard(id(owner))


def _local_only(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0
    except ValueError:
        return False
    return ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified


def _refuse(what: str) -> None:
    _log.warning("air-gapped: refused %s", what)
    raise EgressRefused(errno.EACCES, f"air-gapped: {what} refused")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not _holders or not event.startswith("socket."):
        return
    if event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[1]
        if not isinstance(address, tuple):
            return  # AF_UNIX paths, abstract names: local by construction
        if _local_only(address[0]):
            return
        if event == "socket.sendto" and _from_mdns_port(sock):
            return
        _refuse(f"{event.removeprefix('socket.')} to {address[0]}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if host is None or _local_only(host if isinstance(host, str) else host.decode()):
            return
        _refuse(f"name lookup of {host!r}")
    elif event == "socket.gethostbyname":
        if not _local_only(args[0]):
            _refuse(f"name lookup of {args[0]!r}")
    elif event == "socket.gethostbyaddr":
        # A reverse lookup asks DNS even for 127.0.0.1 when /etc/hosts lacks it
        # (socket.getfqdn, http.server): refused, and getfqdn falls back to the address.
        _refuse(f"reverse lookup of {args[0]!r}")
    elif event == "socket.getnameinfo":
        sockaddr, flags = args[0]
        if not flags & socket.NI_NUMERICHOST:
            _refuse(f"reverse lookup of {sockaddr[0]!r}")


def _from_mdns_port(sock: Any) -> bool:
    try:
        return int(sock.getsockname()[1]) == _MDNS_PORT
    except (OSError, IndexError, TypeError, ValueError):
        return False
