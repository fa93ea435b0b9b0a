"""The .deb on a real systemd: Debian 12, systemd 252 as PID 1 in systemd-nspawn.

What an operator does, checked as an operator would see it: install the package with apt,
the unit is active (notify, shipped hardening), status and a streamed chat answer on the
box, a local user without a token is refused, a killed worker comes back without a unit
restart, a frozen worker is noticed and replaced, a killed daemon is restarted by systemd,
stop exits 0, purge removes what docs/INSTALL.md says. All the while the container's only
route leads into a packet sink: the box must send nothing out.

A machine that cannot boot the container fails this test in CI with the reason; elsewhere
it is skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn_box import Box, booted, missing_tools
from sealed_net import GATEWAY, SealedNet, require
from sealed_net import missing_tools as net_tools_missing

REPO = Path(__file__).resolve().parents[2]
FAST_COMPRESSION = ("--compression", "zstd", "--level", "1")  # releases use xz
LOOPBACK = "127.0.0.1:50051"
# --offline: the router check would rightly try the network (the box is not air-gapped); the
# sink below is there for the daemon.
DOCTOR = ("edge-agent", "doctor", "--offline", "--config")

pytestmark = pytest.mark.timeout(900)


def _need_machine() -> None:
    # The box's sink is wired with this machine's ip/nsenter, so both sets of tools count.
    reason = missing_tools() or net_tools_missing()
    if reason is None and not Path("/usr/bin/python3.11").exists():
        reason = "the package targets /usr/bin/python3.11 (apt-get install python3.11-venv)"
    require(reason, "the systemd appliance test")


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need_machine()
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(
        [str(REPO / "packaging" / "build_deb.sh"), "--out", str(out), *FAST_COMPRESSION],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("edge-agent_*.deb"))


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    _need_machine()
    with booted(tmp_path_factory.mktemp("nspawn")) as running:
        yield running


def _wait(what: str, check: object, timeout: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _status(box: Box) -> str:
    return box.run(["edge-agent", "status"], check=False).stdout


def _worker_pid(box: Box) -> int:
    main = box.main_pid()
    out = box.run(["pgrep", "-P", str(main), "-f", "edge_agent.engine._worker"], check=False)
    pids = out.stdout.split()
    return int(pids[0]) if pids else 0


def _show(box: Box, prop: str) -> str:
    return box.run(["systemctl", "show", "-p", prop, "--value", "edge-agent"]).stdout.strip()


def test_installed_service_on_real_systemd(box: Box, deb: Path) -> None:
    # The box's only route and its resolver lead into the sink, before anything is installed.
    (box.root / "etc/resolv.conf").unlink(missing_ok=True)
    (box.root / "etc/resolv.conf").write_text(f"nameserver {GATEWAY}\n")
    net = SealedNet(enter=box.enter(net_only=True))
    net.wire()
    shutil.copy(deb, box.root / "root/edge-agent.deb")
    with net.capture() as capture:
        install = box.run(["apt-get", "install", "-y", "-q", "/root/edge-agent.deb"], timeout=300)
        assert "did not start" not in install.stderr, install.stderr
        assert box.run(["systemctl", "is-active", "edge-agent"], check=False).stdout.strip() == (
            "active"
        ), box.journal()
        status_text = _show(box, "StatusText")
        assert "engine ready" in status_text, status_text

        doctor = box.run([*DOCTOR, "/etc/edge-agent/agent.toml"], check=False)
        service_line = next(ln for ln in doctor.stdout.splitlines() if " service " in ln)
        assert service_line.startswith("OK") and "active (running)" in service_line, doctor.stdout

        # On the box: root reaches the daemon by its admin socket; the answer streams.
        assert ": ready" in _status(box), box.journal()
        chat = box.run(["edge-agent", "chat", "Say hello.", "--max-tokens", "8", "-v"])
        assert "local: edge-demo-mistral" in chat.stderr, chat.stderr
        assert chat.stdout.strip(), "an empty answer"

        # Loopback is no trust boundary: a local user without a token is refused.
        nobody = box.run(
            ["runuser", "-u", "nobody", "--", "edge-agent", "chat", "hi", "--target", LOOPBACK],
            check=False,
        )
        assert nobody.returncode != 0
        assert "UNAUTHENTICATED" in nobody.stderr, nobody.stderr

        # kill -9 of the worker: the daemon restarts it; systemd does not restart the unit.
        main, worker = box.main_pid(), _worker_pid(box)
        assert worker > 0
        box.run(["kill", "-9", str(worker)])
        _wait("a new worker", lambda: _worker_pid(box) not in (0, worker))
        _wait("ready again", lambda: ": ready" in _status(box))
        assert box.main_pid() == main
        assert _show(box, "NRestarts") == "0"
        assert "restarts 1" in _status(box)

        # A frozen worker answers no ping and uses no CPU: replaced within the liveness timeout.
        frozen = _worker_pid(box)
        box.run(["kill", "-STOP", str(frozen)])
        _wait("the frozen worker replaced", lambda: _worker_pid(box) not in (0, frozen), 40)
        _wait("ready again", lambda: "(1 wedged)" in _status(box) and ": ready" in _status(box))
        assert box.main_pid() == main

        # The daemon killed: systemd restarts the unit (Restart=on-failure).
        box.run(["systemctl", "kill", "-s", "KILL", "edge-agent"])
        _wait("the unit restarted", lambda: _show(box, "NRestarts") == "1", 60)
        _wait(
            "active again",
            lambda: (
                box.run(["systemctl", "is-active", "edge-agent"], check=False).stdout.strip()
                == "active"
            ),
            90,
        )
        assert box.main_pid() != main
        assert ": ready" in _status(box)

        # A start that fails is loud: apt fails and says where to look; doctor names the cause.
        config = box.root / "etc/edge-agent/agent.toml"
        good = config.read_text()
        config.write_text(good.replace("/opt/edge-agent/share/models/demo", "/opt/no-such-model"))
        broken = box.run(
            ["apt-get", "install", "--reinstall", "-y", "-q", "/root/edge-agent.deb"],
            timeout=300,
            check=False,
        )
        assert broken.returncode != 0
        said = broken.stdout + broken.stderr  # apt relays the maintainer script's output
        assert "the service did not start" in said, said
        assert "journalctl -u edge-agent.service" in said
        doctor = box.run([*DOCTOR, "/etc/edge-agent/agent.toml"], check=False)
        assert doctor.returncode != 0
        service_line = next(ln for ln in doctor.stdout.splitlines() if " service " in ln)
        assert service_line.startswith("FAIL") and "failed start" in service_line, doctor.stdout
        config.write_text(good)
        box.run(["systemctl", "reset-failed", "edge-agent"], check=False)
        box.run(["dpkg", "--configure", "-a"], timeout=300)
        assert (
            box.run(["systemctl", "is-active", "edge-agent"], check=False).stdout.strip()
            == "active"
        )

        # A clean stop: exit status 0 within the unit's stop timeout.
        box.run(["systemctl", "stop", "edge-agent"], timeout=60)
        assert _show(box, "Result") == "success"
        assert _show(box, "ExecMainStatus") == "0"
        records = capture.stop()
    assert records == {"dns": [], "tcp_syn": [], "other": []}, records
    assert not list((box.root / "var/lib/edge-agent").rglob("Microsoft"))

    # Purge: config, state and logs go (docs/INSTALL.md); the account stays.
    box.run(["apt-get", "purge", "-y", "-q", "edge-agent"], timeout=120)
    for gone in ("etc/edge-agent", "var/lib/edge-agent", "var/log/edge-agent", "opt/edge-agent"):
        assert not (box.root / gone).exists(), gone
    assert box.run(["getent", "passwd", "edge-agent"], check=False).returncode == 0
