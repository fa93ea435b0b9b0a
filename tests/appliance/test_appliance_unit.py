"""The systemd unit: hardening score, offline verification, contracts, and the W^X sandbox."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.credentials import CredentialsConfig

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edge-agent.service"
DROPIN = REPO / "systemd" / "edge-agent.service.d" / "accelerator.conf.example"
SYSUSERS = REPO / "systemd" / "edge-agent.sysusers"
TMPFILES = REPO / "systemd" / "edge-agent.tmpfiles"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd)",
)
_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) ")


def _unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _exposure(unit: Path) -> tuple[float, str]:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = _EXPOSURE.search(proc.stdout)
    assert match, proc.stdout[-500:] + proc.stderr
    return float(match.group(1)), proc.stderr


@needs_analyze
def test_unit_exposure_at_most_1_5(tmp_path: Path) -> None:
    # A copy in a folder of its own, so no drop-in next to it is picked up.
    shutil.copy(UNIT, tmp_path / UNIT.name)
    exposure, stderr = _exposure(tmp_path / UNIT.name)
    assert exposure <= 1.5, f"exposure {exposure}"
    assert stderr == ""


@needs_analyze
def test_a_bare_unit_scores_unsafe(tmp_path: Path) -> None:
    # Proves the parser reads real scores: the same command without hardening is far worse.
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/bin/true\n")
    exposure, _ = _exposure(bare)
    assert exposure > 5


@needs_analyze
def test_accelerator_dropin_is_valid_and_applies(tmp_path: Path) -> None:
    shutil.copy(UNIT, tmp_path / UNIT.name)
    base, _ = _exposure(tmp_path / UNIT.name)
    dropins = tmp_path / (UNIT.name + ".d")
    dropins.mkdir()
    shutil.copy(DROPIN, dropins / "accelerator.conf")
    widened, stderr = _exposure(tmp_path / UNIT.name)
    assert stderr == "", stderr  # every key known, every value parsed
    assert widened > base  # the drop-in was loaded and opens devices
    assert widened <= 2.0


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` with a stand-in /opt/edge-agent when a mount namespace works.

    Offline it cannot check that the User= exists, that credentials are present, that the
    devices exist or that the sandbox works at run time; it does check syntax, dependencies
    and that every command is executable.
    """
    stand_in = "printf '#!/bin/sh\\n' > /opt/edge-agent/bin/edge-agent && chmod +x /opt/edge-agent/bin/edge-agent"
    script = (
        "set -e; mount -t tmpfs none /opt; mkdir -p /opt/edge-agent/bin; "
        f"{stand_in}; exec systemd-analyze verify {unit}"
    )
    if shutil.which("unshare"):
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if "unshare failed" not in proc.stderr and "mount:" not in proc.stderr:
            return proc
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    shutil.copy(UNIT, tmp_path / UNIT.name)
    proc = _verify(tmp_path / UNIT.name)
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        # Only without a mount namespace: the package is not installed on this machine.
        if "Command /opt/edge-agent/bin/edge-agent is not executable" not in line
    ]
    assert problems == []


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / UNIT.name
    broken.write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy"))
    proc = _verify(broken)
    assert "Failed to parse service type" in proc.stdout + proc.stderr


def test_unit_contract() -> None:
    s = _unit_settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [
        "/opt/edge-agent/bin/edge-agent serve --config /etc/edge-agent/agent.toml"
    ]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["User"] == ["edge-agent"]
    assert s["Restart"] == ["on-failure"]
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory", "LogsDirectory"):
        assert s[key] == ["edge-agent"]
    watchdog = int(s["WatchdogSec"][0].removesuffix("s"))
    assert 10 <= watchdog <= 120
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
        "AF_NETLINK",
    }
    # The pressure monitor reads /proc/pressure and /proc/meminfo.
    assert s.get("ProcSubset", ["all"]) == ["all"]
    # The sealed token's name is the one the credentials store looks up.
    creds = s["LoadCredentialEncrypted"]
    assert CredentialsConfig().systemd_credential in creds
    assert "edge-agent-device-key.pem" in creds
    # Drains within the server's grace, well inside the stop timeout.
    stop = int(s["TimeoutStopSec"][0].removesuffix("s"))
    assert stop >= 30


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles are not installed (apt-get install systemd)",
)
def test_sysusers_and_tmpfiles_in_a_clean_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    shutil.copy(SYSUSERS, root / "usr/lib/sysusers.d/edge-agent.conf")
    shutil.copy(TMPFILES, root / "usr/lib/tmpfiles.d/edge-agent.conf")
    for cmd in (
        ["systemd-sysusers", f"--root={root}", "edge-agent.conf"],
        ["systemd-tmpfiles", f"--root={root}", "--create", "edge-agent.conf"],
    ):
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    user = passwd["edge-agent"]
    uid, gid = int(user[2]), int(user[3])
    assert 0 < uid < 1000  # a system account
    assert user[5] == "/var/lib/edge-agent"
    assert user[6] == "/usr/sbin/nologin"
    for path, mode, owner in (
        ("etc/edge-agent", 0o750, 0),
        ("var/lib/edge-agent", 0o750, uid),
        ("var/log/edge-agent", 0o750, uid),
    ):
        st = (root / path).stat()
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, owner, gid), path


# --- MemoryDenyWriteExecute=yes against the real runtime ---------------------------------

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb(field: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _pb_varint(field << 3) + _pb_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _pb_varint(field << 3 | 2) + _pb_varint(len(data)) + data


def _matmul_onnx() -> bytes:
    """A MatMul model as raw ONNX protobuf (no `onnx` package needed): C[2,4] = A[2,3] B[3,4]."""

    def value_info(name: str, dims: tuple[int, ...]) -> bytes:
        shape = b"".join(_pb(1, _pb(1, d)) for d in dims)
        tensor = _pb(1, 1) + _pb(2, shape)  # elem_type FLOAT
        return _pb(1, name) + _pb(2, _pb(1, tensor))

    node = _pb(1, "A") + _pb(1, "B") + _pb(2, "C") + _pb(3, "mm") + _pb(4, "MatMul")
    graph = (
        _pb(1, node)
        + _pb(2, "g")
        + _pb(11, value_info("A", (2, 3)))
        + _pb(11, value_info("B", (3, 4)))
        + _pb(12, value_info("C", (2, 4)))
    )
    return _pb(1, 8) + _pb(8, _pb(1, "") + _pb(2, 17)) + _pb(7, graph)


_UNDER_MDWE = textwrap.dedent(
    """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({set_mdwe}, {refuse}, 0, 0, 0) != 0:
        print("MDWE-UNSUPPORTED")
        sys.exit(0)
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
    """
).format(set_mdwe=PR_SET_MDWE, refuse=PR_MDWE_REFUSE_EXEC_GAIN)

_WORKLOAD = textwrap.dedent(
    """
    import mmap, sys
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("WX-ALLOWED")
    except PermissionError:
        print("WX-REFUSED")
    import ctypes, numpy, grpc, psutil, httpx, zeroconf, onnxruntime
    import onnxruntime_genai as og
    from cryptography.hazmat.primitives.asymmetric import ec, x25519
    x25519.X25519PrivateKey.generate()
    ec.generate_private_key(ec.SECP256R1())
    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda v: v + 1)
    assert callback(1) == 2
    sess = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    a = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
    b = numpy.ones((3, 4), dtype=numpy.float32)
    (c,) = sess.run(None, {"A": a, "B": b})
    assert numpy.allclose(c, a @ b), c
    if len(sys.argv) > 2:
        model = og.Model(sys.argv[2])
        tok = og.Tokenizer(model)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=24)
        gen = og.Generator(model, params)
        gen.append_tokens(tok.encode("def main"))
        steps = 0
        while not gen.is_done() and steps < 8:
            gen.generate_next_token()
            steps += 1
        print("GENERATED", steps)
    print("WORKLOAD-OK")
    """
)


def test_runtime_works_without_writable_executable_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes, emulated with the kernel's PR_SET_MDWE (Linux >= 6.3).

    Both refuse mappings that are writable and executable; the canary mmap proves the
    restriction is in force, then the daemon's native stack does real work under it.
    """
    model = tmp_path / "matmul.onnx"
    model.write_bytes(_matmul_onnx())
    args = [sys.executable, "-c", _UNDER_MDWE, _WORKLOAD, str(model)]
    demo = REPO / "models" / "demo"
    if (demo / "genai_config.json").is_file():
        args.append(str(demo))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, check=False)
    if "MDWE-UNSUPPORTED" in proc.stdout:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WX-REFUSED" in proc.stdout
    assert "WORKLOAD-OK" in proc.stdout
    if len(args) > 5:
        assert "GENERATED" in proc.stdout
