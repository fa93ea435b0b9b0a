"""sd_notify over a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.sdnotify import SystemdNotifier, WatchdogLoop, WatchdogVerdict, extending_timeout


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def recv(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def recv_raw(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(5)
        return out


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = str(tmp_path / "notify")
    fs = FakeSystemd(path)
    yield fs, path
    fs.sock.close()


def test_messages_arrive_in_order(fake_systemd: tuple[FakeSystemd, str]) -> None:
    fs, path = fake_systemd
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.extend_timeout(90_000_000)
    assert n.status("loading model demo\nsecond line")
    assert n.ready("serving demo on cpu")
    assert n.watchdog()
    assert n.reloading()
    assert n.ready()
    assert n.stopping()
    msgs = [fs.recv() for _ in range(7)]
    assert msgs[0] == {"EXTEND_TIMEOUT_USEC": "90000000"}
    # A newline in STATUS would inject another assignment; it is flattened.
    assert msgs[1] == {"STATUS": "loading model demo second line"}
    assert msgs[2] == {"READY": "1", "STATUS": "serving demo on cpu"}
    assert msgs[3] == {"WATCHDOG": "1"}
    assert msgs[4]["RELOADING"] == "1"
    mono = int(msgs[4]["MONOTONIC_USEC"])
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < mono <= now
    assert msgs[5] == {"READY": "1"}
    assert msgs[6] == {"STOPPING": "1"}
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    fs = FakeSystemd(b"\0" + name.encode())
    try:
        n = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert fs.recv() == {"READY": "1"}
        n.close()
    finally:
        fs.sock.close()


def test_absent_socket_is_noop() -> None:
    n = SystemdNotifier({})
    assert not n.enabled
    assert n.watchdog_usec is None
    assert n.ready() is False
    assert n.status("x") is False
    w = WatchdogLoop(n)
    assert not w.active


def test_unsupported_address_family_is_noop() -> None:
    n = SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled


def test_send_failure_is_reported_not_raised(tmp_path: Path) -> None:
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.enabled
    assert n.ready() is False


def test_environment_read_at_construction(
    fake_systemd: tuple[FakeSystemd, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, path = fake_systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = SystemdNotifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert n.watchdog_usec == 2_000_000
    assert n.status("still here")
    assert fs.recv() == {"STATUS": "still here"}


def test_watchdog_pid_honoured(fake_systemd: tuple[FakeSystemd, str]) -> None:
    _, path = fake_systemd
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    assert SystemdNotifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_usec == 1_000_000
    assert SystemdNotifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_usec is None
    assert SystemdNotifier({**env, "WATCHDOG_USEC": "0"}).watchdog_usec is None
    assert SystemdNotifier({**env, "WATCHDOG_USEC": "soon"}).watchdog_usec is None


def test_extend_timeout_refuses_nonsense(fake_systemd: tuple[FakeSystemd, str]) -> None:
    _, path = fake_systemd
    with pytest.raises(ValueError, match="positive"):
        SystemdNotifier({"NOTIFY_SOCKET": path}).extend_timeout(0)


class Marker:
    """Writes markers into the same socket, so the received order tells the story."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.path = path

    def mark(self, text: str) -> None:
        self.sock.sendto(text.encode(), self.path)


class Verdicts(list[WatchdogVerdict]):
    """Verdicts as the loop reports them, with a way to wait for the n-th."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def add(self, verdict: WatchdogVerdict) -> None:
        self.append(verdict)
        self._changed.set()

    async def wait_for(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self) < n:
                self._changed.clear()
                await self._changed.wait()


def _watchdog_env(path: str) -> dict[str, str]:
    # 0.4 s WatchdogSec: pings every 0.2 s, a wake-up 0.1 s late counts as blocked.
    return {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}


async def test_watchdog_pings_while_alive_and_not_after_a_blocked_loop(
    fake_systemd: tuple[FakeSystemd, str],
) -> None:
    fs, path = fake_systemd
    marker = Marker(path)
    verdicts = Verdicts()
    loop = WatchdogLoop(SystemdNotifier(_watchdog_env(path)), on_verdict=verdicts.add)
    assert loop.active

    def alive() -> bool:
        marker.mark("CHECK")
        return True

    loop.add_check("alive", alive)
    loop.start()
    await verdicts.wait_for(2)

    def block() -> None:
        marker.mark("BLOCK_START")
        time.sleep(0.6)  # the event loop is wedged for longer than WatchdogSec
        marker.mark("BLOCK_END")

    asyncio.get_running_loop().call_soon(block)
    await asyncio.sleep(0)
    n_before = len(verdicts)
    await verdicts.wait_for(n_before + 2)
    await loop.stop()

    stream = fs.drain()
    end = stream.index("BLOCK_END")
    assert stream[:4] == ["CHECK", "WATCHDOG=1", "CHECK", "WATCHDOG=1"]
    # The round that woke up late ran its checks but sent no ping; the next one pinged.
    assert stream[end + 1 : end + 4] == ["CHECK", "CHECK", "WATCHDOG=1"]
    late = verdicts[n_before]
    assert not late.pinged
    assert late.failed_check is None
    assert late.lag_s > 0.1
    assert "blocked" in late.reason
    assert verdicts[n_before + 1].pinged
    assert stream.count("WATCHDOG=1") == sum(v.pinged for v in verdicts)


@pytest.mark.parametrize("mode", ["false", "raises", "hangs", "truthy-not-true"])
async def test_watchdog_withheld_when_a_check_fails(
    fake_systemd: tuple[FakeSystemd, str], mode: str
) -> None:
    fs, path = fake_systemd
    verdicts = Verdicts()
    loop = WatchdogLoop(SystemdNotifier(_watchdog_env(path)), on_verdict=verdicts.add)
    healthy = True

    def ok() -> bool:
        return True

    async def engine() -> bool:
        if healthy:
            return True
        if mode == "false":
            return False
        if mode == "raises":
            raise RuntimeError("supervisor gone")
        if mode == "hangs":
            await asyncio.sleep(60)
        return "yes"  # type: ignore[return-value]

    loop.add_check("loop", ok)
    loop.add_check("engine", engine)
    with pytest.raises(ValueError, match="already registered"):
        loop.add_check("engine", engine)
    loop.start()
    await verdicts.wait_for(2)
    healthy = False
    n_before = len(verdicts)
    await verdicts.wait_for(n_before + 3)
    healthy = True
    n_after = len(verdicts)
    await verdicts.wait_for(n_after + 2)
    await loop.stop()

    stream = fs.drain()
    assert set(stream) == {"WATCHDOG=1"}
    assert len(stream) == sum(v.pinged for v in verdicts)
    # Rounds that started after the check went bad pinged nothing (allow one in flight).
    failing = verdicts[n_before + 1 : n_after]
    assert failing
    assert all(not v.pinged and v.failed_check == "engine" for v in failing)
    assert "engine" in failing[0].reason
    assert verdicts[-1].pinged


async def test_watchdog_inactive_without_watchdog_usec(
    fake_systemd: tuple[FakeSystemd, str],
) -> None:
    fs, path = fake_systemd
    loop = WatchdogLoop(SystemdNotifier({"NOTIFY_SOCKET": path}))
    assert not loop.active
    await asyncio.wait_for(loop.start(), 1)
    assert fs.drain() == []


async def test_extending_timeout_while_body_runs(fake_systemd: tuple[FakeSystemd, str]) -> None:
    fs, path = fake_systemd
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    async with extending_timeout(n, every_s=0.05, extend_usec=1_000_000):
        await asyncio.sleep(0.2)
    got = fs.drain()
    assert len(got) >= 2
    assert set(got) == {"EXTEND_TIMEOUT_USEC=1000000"}
    await asyncio.sleep(0.1)
    assert fs.drain() == []  # stopped with the body
    with pytest.raises(ValueError, match="exceed"):
        async with extending_timeout(n, every_s=10, extend_usec=1_000_000):
            pass
