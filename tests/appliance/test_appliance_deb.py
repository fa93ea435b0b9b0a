"""The Debian package: built by packaging/build_deb.sh, installed into a clean root, purged.

The build reuses wheels and a relocated dependency venv cached under .cache/deb (the first
run downloads from PyPI). dpkg installs with --root and --force-script-chrootless, so the
maintainer scripts run with DPKG_ROOT set and must touch nothing outside the root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import parse_config

REPO = Path(__file__).resolve().parents[2]
TARGET_PYTHON = Path("/usr/bin/python3.11")

pytestmark = [
    pytest.mark.skipif(
        shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None,
        reason="dpkg tools are not installed (not a Debian system)",
    ),
    pytest.mark.skipif(
        not TARGET_PYTHON.exists(),
        reason="the package targets /usr/bin/python3.11 (apt-get install python3.11-venv)",
    ),
    pytest.mark.skipif(
        os.geteuid() != 0 and shutil.which("fakeroot") is None,
        reason="installing into a root needs root or fakeroot",
    ),
    pytest.mark.timeout(900),
]


def _dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args]
    if os.geteuid() != 0:
        cmd = ["fakeroot", *cmd, "--force-not-root"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def _empty_root(path: Path) -> Path:
    (path / "var/lib/dpkg/info").mkdir(parents=True)
    (path / "var/lib/dpkg/updates").mkdir()
    (path / "var/lib/dpkg/status").touch()
    return path


def _host_wants() -> set[str]:
    wants = Path("/etc/systemd/system/multi-user.target.wants")
    return set(os.listdir(wants)) if wants.is_dir() else set()


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "packaging" / "build_deb.sh"),
            "--out",
            str(out),
            # Fast compression for tests; releases use the default (xz).
            "--compression",
            "zstd",
            "--level",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.name.startswith("edge-agent_") and path.name.endswith(".deb")
    return path


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    before = _host_wants()
    root = _empty_root(tmp_path_factory.mktemp("root"))
    _dpkg(root, "-i", str(deb))
    yield root
    # Maintainer scripts honoured DPKG_ROOT: the host's systemd config is untouched.
    assert _host_wants() == before


def _ids(root: Path, name: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no {name} account in the root")


def _mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def test_package_metadata(deb: Path) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert deb.name == f"edge-agent_{version}_{arch}.deb"
    fields = {}
    for field in ("Package", "Version", "Architecture", "Depends", "Installed-Size"):
        fields[field] = subprocess.run(
            ["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True, check=True
        ).stdout.strip()
    assert fields["Package"] == "edge-agent"
    assert fields["Version"] == version
    assert fields["Architecture"] == arch
    assert "python3.11" in fields["Depends"]
    assert int(fields["Installed-Size"]) > 10_000
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert conffiles == ["/etc/edge-agent/agent.toml"]


def test_installed_files_and_permissions(installed: Path) -> None:
    root = installed
    uid, gid = _ids(root, "edge-agent")
    assert 0 < uid < 1000
    assert (root / "lib/systemd/system/edge-agent.service").read_bytes() == (
        REPO / "systemd/edge-agent.service"
    ).read_bytes()
    assert _mode(root / "lib/systemd/system/edge-agent.service") == (0o644, 0, 0)
    assert (root / "usr/lib/sysusers.d/edge-agent.conf").read_bytes() == (
        REPO / "systemd/edge-agent.sysusers"
    ).read_bytes()
    assert (root / "usr/lib/tmpfiles.d/edge-agent.conf").read_bytes() == (
        REPO / "systemd/edge-agent.tmpfiles"
    ).read_bytes()
    # Config: root writes, the daemon's group reads, nobody else.
    assert _mode(root / "etc/edge-agent") == (0o750, 0, gid)
    assert _mode(root / "etc/edge-agent/agent.toml") == (0o640, 0, gid)
    assert _mode(root / "var/lib/edge-agent") == (0o750, uid, gid)
    assert _mode(root / "var/log/edge-agent") == (0o750, uid, gid)
    script = root / "opt/edge-agent/bin/edge-agent"
    assert _mode(script) == (0o755, 0, 0)
    assert script.read_text().splitlines()[0] == "#!/opt/edge-agent/bin/python"
    assert os.readlink(root / "usr/bin/edge-agent") == "/opt/edge-agent/bin/edge-agent"
    # No pip in the shipped venv: the package manages it.
    assert not list((root / "opt/edge-agent/lib").glob("python3*/site-packages/pip"))
    # Enabled the way deb-systemd-helper does it, inside the root.
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert os.readlink(wants) == "/lib/systemd/system/edge-agent.service"
    demo = REPO / "models/demo/genai_config.json"
    if demo.is_file():
        assert (root / "opt/edge-agent/share/models/demo/genai_config.json").is_file()


def test_dpkg_verifies_every_file(installed: Path) -> None:
    proc = _dpkg(installed, "--verify", "edge-agent")
    assert proc.stdout == ""
    status = subprocess.run(
        ["dpkg-query", f"--root={installed}", "-W", "-f=${Status}", "edge-agent"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert status == "install ok installed"


def test_commented_config_is_valid(installed: Path) -> None:
    path = installed / "etc/edge-agent/agent.toml"
    cfg = parse_config(tomllib.loads(path.read_text()), source=str(path), base=path.parent)
    assert cfg.paths.state_dir == Path("/var/lib/edge-agent")
    if (REPO / "models/demo/genai_config.json").is_file():
        assert cfg.engine.model_dir == Path("/opt/edge-agent/share/models/demo")


def test_installed_console_script_runs(installed: Path) -> None:
    venv = installed / "opt/edge-agent"
    # The venv's interpreter finds its site-packages from its own location.
    proc = subprocess.run(
        [str(venv / "bin/python"), str(venv / "bin/edge-agent"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=installed,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serve" in proc.stdout
    probe = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import sys, edge_agent, onnxruntime_genai; print(sys.prefix); print(edge_agent.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=installed,  # not the checkout: its edge_agent must not shadow the installed one
    ).stdout.splitlines()
    assert probe[0] == str(venv)
    assert probe[1].startswith(str(venv))


def test_installed_console_script_runs_through_its_shebang(installed: Path) -> None:
    """At /opt/edge-agent itself, via a private mount namespace (no change to the host)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    script = (
        "set -e; mount -t tmpfs none /opt; mkdir /opt/edge-agent; "
        f"mount --bind {installed}/opt/edge-agent /opt/edge-agent; "
        "/opt/edge-agent/bin/edge-agent --help; "
        f"systemd-analyze verify {installed}/lib/systemd/system/edge-agent.service"
    )
    cmd = ["unshare", "-m", "sh", "-c", script]
    if os.geteuid() != 0:
        cmd = ["unshare", "-r", *cmd[1:]]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, check=False, cwd=installed
    )
    if proc.returncode != 0 and ("unshare" in proc.stderr or "mount:" in proc.stderr):
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "serve" in proc.stdout
    # systemd-analyze verify of the installed unit: executable found, nothing to report.
    assert proc.stderr == ""


def _seed_state(root: Path) -> tuple[Path, Path, Path, Path]:
    conf = root / "etc/edge-agent/agent.toml"
    conf.write_text(conf.read_text() + "\n# local change\n")
    state = root / "var/lib/edge-agent/device/device_key.pem"
    state.parent.mkdir()
    state.write_text("not a real key")
    sealed = root / "etc/credstore.encrypted/edge-agent-hf-token.sealed"
    sealed.parent.mkdir(parents=True)
    sealed.write_text("sealed")
    other = root / "etc/credstore.encrypted/other-service.cred"
    other.write_text("someone else's")
    return conf, state, sealed, other


def test_remove_keeps_state_purge_removes_it(deb: Path, tmp_path: Path) -> None:
    root = _empty_root(tmp_path / "root")
    _dpkg(root, "-i", str(deb))
    conf, state, sealed, other = _seed_state(root)

    _dpkg(root, "-r", "edge-agent")
    assert not (root / "opt/edge-agent/bin/edge-agent").exists()
    assert not (root / "lib/systemd/system/edge-agent.service").exists()
    assert state.read_text() == "not a real key"
    assert conf.read_text().endswith("# local change\n")  # a conffile survives remove
    assert sealed.exists()

    _dpkg(root, "-P", "edge-agent")
    assert not (root / "var/lib/edge-agent").exists()
    assert not (root / "var/log/edge-agent").exists()
    assert not (root / "etc/edge-agent").exists()
    assert not sealed.exists()
    assert other.read_text() == "someone else's"
    assert not (root / "opt/edge-agent").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/edge-agent.service").exists()
    assert not (root / "etc/systemd/system/edge-agent.service").exists()  # no mask left
    # Debian policy: the system account stays.
    assert _ids(root, "edge-agent")


@pytest.mark.slow
def test_upgrade_keeps_config_and_enablement(deb: Path, tmp_path: Path) -> None:
    """Reinstalling runs the upgrade path of the maintainer scripts (unpacks 6000 files twice)."""
    root = _empty_root(tmp_path / "root")
    _dpkg(root, "-i", str(deb))
    conf, state, _, _ = _seed_state(root)
    _dpkg(root, "--force-confold", "-i", str(deb))
    assert conf.read_text().endswith("# local change\n")
    assert state.read_text() == "not a real key"
    assert (root / "etc/systemd/system/multi-user.target.wants/edge-agent.service").is_symlink()
    # Only the edited conffile differs from what the package shipped.
    changed = _dpkg(root, "--verify", "edge-agent").stdout.splitlines()
    assert changed == ["??5?????? c /etc/edge-agent/agent.toml"]
