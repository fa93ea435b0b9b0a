"""A network with one route into a packet sink, for proving that nothing leaves a box.

``SealedNet`` sets up a network namespace (a fresh one, or an nspawn container's) with
loopback and a veth pair: the default route and the resolver point at the unaddressed far
end, reached through a permanent neighbour entry, so every packet meant for the world leaves
through ``sink0`` and nothing ever answers. :class:`PacketCapture` runs egress_sink.py
inside the namespace and returns what it saw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SINK_SCRIPT = Path(__file__).with_name("egress_sink.py")
GATEWAY = "10.253.0.53"
ADDRESS = "10.253.0.1/24"


def missing_tools() -> str | None:
    """Why this machine cannot build a sealed network, or None."""
    if os.geteuid() != 0:
        return "network namespaces and packet capture need root"
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return "iproute2 and util-linux (ip, nsenter) are needed"
    return None


def require(reason: str | None, what: str) -> None:
    """Go on when ``reason`` is None; else skip, or in CI fail with the reason: a proof that
    silently skips there proves nothing."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} cannot run here: {reason}")
    pytest.skip(reason)


def _run(cmd: Sequence[str]) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class SealedNet:
    """``enter`` runs a command inside the namespace (``ip netns exec NS`` or ``nsenter -n``)."""

    enter: list[str]
    name: str = ""
    _netns_etc: Path | None = field(default=None, repr=False)

    def ip(self, *args: str) -> str:
        return _run([*self.enter, "ip", *args])

    def wire(self) -> None:
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", "sink0", "type", "veth", "peer", "name", "sink1")
        for iface in ("sink0", "sink1"):
            # No IPv6 on the pair: the kernel's own router solicitations would be noise.
            _run([*self.enter, "sysctl", "-q", "-w", f"net.ipv6.conf.{iface}.disable_ipv6=1"])
            self.ip("link", "set", iface, "up")
        self.ip("addr", "add", ADDRESS, "dev", "sink0")
        far = json.loads(self.ip("-j", "link", "show", "sink1"))[0]["address"]
        self.ip("neigh", "add", GATEWAY, "lladdr", far, "dev", "sink0", "nud", "permanent")
        self.ip("route", "add", "default", "via", GATEWAY, "dev", "sink0")

    @contextmanager
    def capture(self) -> Iterator[PacketCapture]:
        cap = PacketCapture(self.enter)
        try:
            yield cap
        finally:
            cap.stop()


@contextmanager
def fresh_namespace() -> Iterator[SealedNet]:
    """A new named namespace; ``ip netns exec`` gives it /etc/netns/NAME/resolv.conf."""
    name = f"edge-sealed-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / name
    _run(["ip", "netns", "add", name])
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver {GATEWAY}\n")
        net = SealedNet(enter=["ip", "netns", "exec", name], name=name, _netns_etc=etc)
        net.wire()
        yield net
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
        shutil.rmtree(etc, ignore_errors=True)


class PacketCapture:
    """egress_sink.py running inside the namespace until :meth:`stop`."""

    def __init__(self, enter: Sequence[str]) -> None:
        self._proc = subprocess.Popen(
            [*enter, sys.executable, str(SINK_SCRIPT), "sink0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != "ready":
            self._proc.kill()
            raise RuntimeError(f"the packet sink did not start (said {line!r})")
        self.records: dict[str, list[dict[str, Any]]] | None = None

    def stop(self) -> dict[str, list[dict[str, Any]]]:
        if self.records is None:
            self._proc.terminate()
            out, _ = self._proc.communicate(timeout=10)
            self.records = json.loads(out.strip().splitlines()[-1])
        return self.records


PROBE = """
import socket
try:
    socket.getaddrinfo("mobile.events.data.microsoft.com", 443)
except OSError:
    pass
s = socket.socket()
s.settimeout(0.5)
try:
    s.connect(("52.0.0.1", 443))
except OSError:
    pass
"""


def prove_sink_sees(net: SealedNet, python: str = sys.executable) -> dict[str, list[Any]]:
    """The positive control: a lookup and a connect from inside must both be recorded."""
    with net.capture() as cap:
        _run([*net.enter, python, "-c", PROBE])
    records = cap.stop()
    assert any(r["name"] == "mobile.events.data.microsoft.com" for r in records["dns"]), records
    assert {"dst": "52.0.0.1", "port": 443} in records["tcp_syn"], records
    return records
