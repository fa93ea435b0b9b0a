"""A stock Debian 12 booted with systemd as PID 1 in systemd-nspawn, for the installed package.

The root file system is made once by debootstrap (minbase, from Debian's packages) and kept
as a tarball under ``$XDG_CACHE_HOME/edge-agent-tests`` (``~/.cache``), so later runs on the
same machine only unpack it; each test run boots a fresh copy. The container runs with
``--private-network`` (only loopback inside) and, on these machines, needs
``--register=no --keep-unit`` (no machined on the host). Commands run inside through
``nsenter`` into the container's PID 1 namespaces.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a stock minimal Debian with systemd has; python3 is the package's own dependency.
INCLUDE = ("systemd", "systemd-sysv", "dbus", "iproute2", "python3", "procps")


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "booting a container needs root"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install systemd-container debootstrap)"
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-agent-tests"


def rootfs_tarball() -> Path:
    """The cached minbase root file system, made by debootstrap on first use (~1-2 min)."""
    key = hashlib.sha256(repr((SUITE, MIRROR, INCLUDE)).encode()).hexdigest()[:12]
    tarball = _cache_dir() / f"debian-{SUITE}-minbase-{key}.tar"
    if tarball.exists():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = tarball.parent / f"rootfs-{key}.partial"
    shutil.rmtree(work, ignore_errors=True)
    proc = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(INCLUDE)}",
            SUITE,
            str(work),
            MIRROR,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"debootstrap failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    partial = tarball.with_suffix(".tar.partial")
    subprocess.run(["tar", "-C", str(work), "-cf", str(partial), "."], check=True, timeout=600)
    partial.rename(tarball)
    shutil.rmtree(work, ignore_errors=True)
    return tarball


@dataclass
class Box:
    root: Path
    leader: int  # the container's PID 1, as seen from the host
    console: Path

    def enter(self, *, net_only: bool = False) -> list[str]:
        ns = ["-n"] if net_only else ["-m", "-u", "-i", "-n", "-p"]
        return ["nsenter", "-t", str(self.leader), *ns]

    def run(
        self, cmd: Sequence[str], *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.enter(), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TERM": "dumb"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def journal(self, unit: str = "edge-agent") -> str:
        return self.run(
            ["journalctl", "-u", unit, "-b", "--no-pager", "-n", "80"], check=False
        ).stdout

    def main_pid(self, unit: str = "edge-agent") -> int:
        out = self.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout
        return int(out.strip() or 0)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _leader(nspawn: subprocess.Popen[bytes]) -> int | None:
    """The container's init: the descendant of nspawn that is PID 1 in its own namespace.

    nspawn's first child is an intermediate process; under load it can be seen before the
    real init exists, so look for ``NSpid: <host pid> 1``.
    """
    todo = _children(nspawn.pid)
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1":
            return pid
        todo.extend(_children(pid))
    return None


@contextmanager
def booted(workdir: Path) -> Iterator[Box]:
    """Unpack the cached root, boot it, wait for systemd to finish booting, power off after."""
    root = workdir / "root"
    root.mkdir()
    with tarfile.open(rootfs_tarball()) as tar:
        tar.extractall(root, filter="fully_trusted")  # noqa: S202 - our own debootstrap output
    console = workdir / "console.log"
    with console.open("wb") as out:
        nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "-D",
                str(root),
                "-b",
                "--register=no",
                "--keep-unit",
                "--private-network",
                f"--machine=edge-test-{os.getpid()}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        leader = None
        while leader is None and time.monotonic() < deadline:
            if nspawn.poll() is not None:
                raise AssertionError(f"nspawn exited at boot: {console.read_text()[-3000:]}")
            leader = _leader(nspawn)
            time.sleep(0.2)
        assert leader is not None, f"no container PID 1: {console.read_text()[-3000:]}"
        box = Box(root, leader, console)
        state = ""
        while time.monotonic() < deadline:
            state = box.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        assert state in ("running", "degraded"), f"boot did not finish: {state}"
        yield box
    finally:
        if nspawn.poll() is None:
            # SIGRTMIN+4 asks systemd (PID 1) for a clean power-off; nspawn then exits.
            leader = _leader(nspawn)
            if leader is not None:
                os.kill(leader, signal.SIGRTMIN + 4)
            try:
                nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(nspawn.pid, signal.SIGKILL)
                nspawn.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
