"""edge-agent doctor against real files, real permissions and real loopback servers."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import pwd
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from edge_agent._doctor_checks import (
    check_clock,
    check_disk,
    check_huge_pages,
    check_keys,
    check_model,
    check_pressure,
    check_providers,
    check_router,
    check_state_dir,
    check_unit,
)
from edge_agent._doctor_service import check_service
from edge_agent._malloc import glibc_reads_hugetlb
from edge_agent.config import parse_config
from edge_agent.doctor import (
    DoctorInputs,
    DoctorReport,
    Status,
    add_doctor_command,
    format_report,
    inputs_from_config,
    run_doctor,
)
from edge_agent.errors import SignatureError

REPO = Path(__file__).resolve().parents[2]
ME = pwd.getpwuid(os.getuid()).pw_name


def _other_user() -> str:
    for entry in pwd.getpwall():
        if entry.pw_uid != os.getuid():
            return entry.pw_name
    pytest.skip("no second account on this machine")


# --- providers ---------------------------------------------------------------------------


def test_providers_on_this_box() -> None:
    assert check_providers(["cpu"]).status is Status.OK
    # No GPU here: CUDA configured first falls back to cpu with a warning...
    warn = check_providers(["cuda", "cpu"])
    assert warn.status is Status.WARN
    assert "cuda" in warn.detail and "drop-in" in warn.fix
    # ...and without cpu nothing can run.
    assert check_providers(["cuda"]).status is Status.FAIL


def test_provider_needs_both_genai_and_onnxruntime() -> None:
    # Stand-ins for accelerator runtimes that cannot exist on this machine.
    claimed = {"cpu", "openvino", "cuda"}
    only_genai = check_providers(
        ["openvino", "cpu"], genai=lambda: claimed, ort=lambda: ["CPUExecutionProvider"]
    )
    assert only_genai.status is Status.WARN
    both = check_providers(
        ["cuda", "cpu"],
        genai=lambda: claimed,
        ort=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert both.status is Status.OK
    assert both.detail.startswith("will use cuda")


# --- model -------------------------------------------------------------------------------


def _model_dir(tmp_path: Path, *, with_onnx: bool = True) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    cfg = {"model": {"type": "mistral", "decoder": {"filename": "model.onnx"}}}
    (d / "genai_config.json").write_text(json.dumps(cfg))
    if with_onnx:
        (d / "model.onnx").write_bytes(b"\x08\x08")
    return d


def test_model_folder(tmp_path: Path) -> None:
    good = _model_dir(tmp_path)
    assert check_model(good, None).status is Status.OK
    assert check_model(None, None).status is Status.FAIL
    assert check_model(tmp_path / "nowhere", None).status is Status.FAIL
    (good / "model.onnx").unlink()
    missing = check_model(good, None)
    assert missing.status is Status.FAIL and "model.onnx" in missing.detail
    (good / "genai_config.json").write_text("{not json")
    assert check_model(good, None).status is Status.FAIL
    (good / "genai_config.json").write_text('{"model": {}}')
    assert "decoder" in check_model(good, None).detail


def test_model_bundle_hook(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    seen: list[Path] = []

    def accept(path: Path) -> None:
        seen.append(path)

    def refuse(path: Path) -> None:
        raise SignatureError("signature does not verify against the trust store")

    assert check_model(d, accept).status is Status.OK
    assert seen == [d]
    refused = check_model(d, refuse)
    assert refused.status is Status.FAIL
    assert "signature does not verify" in refused.detail


@pytest.mark.skipif(
    not (REPO / "models/demo/genai_config.json").is_file(), reason="models/demo not built yet"
)
def test_demo_model_passes() -> None:
    assert check_model(REPO / "models/demo", None).status is Status.OK


# --- keys and state directory --------------------------------------------------------------


def test_keys_permissions(tmp_path: Path) -> None:
    key = tmp_path / "device_key.pem"
    key.write_text("k")
    key.chmod(0o644)
    loose = check_keys([key, tmp_path / "absent.pem"], ME)
    assert loose.status is Status.FAIL
    assert f"chmod 600 {key}" in loose.fix
    key.chmod(0o600)
    assert check_keys([key], ME).status is Status.OK
    foreign = check_keys([key], _other_user())
    assert foreign.status is Status.FAIL and "not owned" in foreign.detail
    assert check_keys([tmp_path / "absent.pem"], ME).status is Status.WARN


def test_state_dir_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert check_state_dir(state, ME).status is Status.FAIL
    state.mkdir()
    state.chmod(0o777)
    ww = check_state_dir(state, ME)
    assert ww.status is Status.FAIL and "world-writable" in ww.detail
    state.chmod(0o755)
    assert check_state_dir(state, ME).status is Status.WARN
    state.chmod(0o750)
    assert check_state_dir(state, ME).status is Status.OK
    assert check_state_dir(state, _other_user()).status is Status.FAIL


# --- clock, disk, pressure -----------------------------------------------------------------


def test_clock() -> None:
    built = time.time()
    assert check_clock(built).status is Status.OK
    behind = check_clock(built, now=built - 30 * 86400)
    assert behind.status is Status.FAIL and "timedatectl" in behind.fix
    assert check_clock(built, now=built + 50 * 365 * 86400).status is Status.FAIL


def test_disk(tmp_path: Path) -> None:
    assert check_disk(tmp_path, fail_below=0, warn_below=0).status is Status.OK
    huge = 1 << 60
    assert check_disk(tmp_path, fail_below=0, warn_below=huge).status is Status.WARN
    assert check_disk(tmp_path, fail_below=huge, warn_below=huge).status is Status.FAIL
    # A state dir that does not exist yet is measured on the folder that will hold it.
    assert check_disk(tmp_path / "a/b", fail_below=0, warn_below=0).status is Status.OK


def test_pressure(tmp_path: Path) -> None:
    if Path("/proc/pressure/memory").exists():
        assert check_pressure(Path("/proc")).status is Status.OK
    # A kernel without PSI cannot be booted here: an empty proc root stands in for it.
    assert check_pressure(tmp_path).status is Status.WARN


def test_huge_pages(tmp_path: Path) -> None:
    thp = tmp_path / "enabled"
    glibc = ("glibc", "2.36")
    for line, status in (
        ("always [madvise] never\n", Status.OK),
        ("[always] madvise never\n", Status.OK),
        ("always madvise [never]\n", Status.WARN),
    ):
        thp.write_text(line)
        assert check_huge_pages(True, thp, glibc).status is status, line
    never = check_huge_pages(True, thp, glibc)
    assert "never" in never.detail and str(thp) in never.fix
    assert check_huge_pages(True, tmp_path / "absent", glibc).status is Status.WARN
    thp.write_text("always [madvise] never\n")
    old = check_huge_pages(True, thp, ("glibc", "2.31"))
    assert old.status is Status.WARN and "2.35" in old.fix
    assert check_huge_pages(True, thp, ("", "")).status is Status.WARN  # musl and others
    assert check_huge_pages(False, tmp_path / "absent", ("", "")).status is Status.OK
    # This box, as the packaged doctor reads it.
    real = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if real.exists() and "[madvise]" in real.read_text() and glibc_reads_hugetlb():
        assert check_huge_pages(True, real).status is Status.OK


# --- router --------------------------------------------------------------------------------


class _Router(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        type(self).requests.append(f"HEAD {self.path}")
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def router() -> Iterator[tuple[str, list[str]]]:
    _Router.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Router)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Router.requests
    server.shutdown()
    server.server_close()
    thread.join()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_router_reachable(router: tuple[str, list[str]]) -> None:
    url, seen = router
    result = check_router(url, air_gapped=False, timeout_s=5)
    assert result.status is Status.OK
    assert "HTTP 404" in result.detail
    assert seen == ["HEAD /v1"]


def test_router_unreachable() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    result = check_router(url, air_gapped=False, timeout_s=2)
    assert result.status is Status.WARN
    assert "cannot connect" in result.detail and "air_gapped" in result.fix


def test_router_silent_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        result = check_router(url, air_gapped=False, timeout_s=0.3)
    assert result.status is Status.WARN
    assert "no answer" in result.detail


def test_air_gapped_opens_no_socket(router: tuple[str, list[str]]) -> None:
    url, seen = router
    result = check_router(url, air_gapped=True, timeout_s=5)
    assert result.status is Status.OK and "air-gapped" in result.detail
    assert seen == []


# --- systemd unit --------------------------------------------------------------------------


def test_unit_hardening(tmp_path: Path) -> None:
    unit = REPO / "systemd/edge-agent.service"
    assert check_unit([tmp_path / "absent.service"], []).detail.startswith("not installed")
    assert check_unit([unit], []).status is Status.OK
    dropins = tmp_path / "edge-agent.service.d"
    dropins.mkdir()
    accel = REPO / "systemd/edge-agent.service.d/accelerator.conf.example"
    (dropins / "accelerator.conf").write_text(accel.read_text())
    assert check_unit([unit], [dropins]).status is Status.OK
    (dropins / "zz-debug.conf").write_text("[Service]\nProtectSystem=no\nUser=root\n")
    weak = check_unit([unit], [dropins])
    assert weak.status is Status.WARN
    assert "ProtectSystem=no" in weak.detail and "User=root" in weak.detail


# --- the report and the command ----------------------------------------------------------


def _inputs(tmp_path: Path, **kw: object) -> DoctorInputs:
    state = tmp_path / "state"
    state.mkdir(mode=0o750, exist_ok=True)
    state.chmod(0o750)
    key = state / "device_key.pem"
    key.write_text("k")
    key.chmod(0o600)
    values: dict[str, object] = {
        "state_dir": state,
        "model_dir": _model_dir(tmp_path),
        "key_paths": (key,),
        "router_base_url": None,
        "service_user": ME,
        "min_free_bytes": 0,
        "warn_free_bytes": 0,
        "unit_paths": (REPO / "systemd/edge-agent.service",),
        "dropin_dirs": (),
    }
    values.update(kw)
    return DoctorInputs(**values)  # type: ignore[arg-type]


def test_healthy_box_passes(tmp_path: Path) -> None:
    report = run_doctor(_inputs(tmp_path))
    assert [r.name for r in report.results] == [
        "providers",
        "model",
        "keys",
        "state dir",
        "clock",
        "disk",
        "pressure",
        "huge pages",
        "router",
        "systemd unit",
        "service",
    ]
    assert report.exit_code == 0, format_report(report)
    table = format_report(report)
    assert "0 failed" in table


def test_a_crashing_check_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    def broken(path: Path) -> None:
        raise RuntimeError("/secret/internal/path")

    report = run_doctor(_inputs(tmp_path), bundle_verifier=broken)
    model = report.result("model")
    assert model.status is Status.FAIL
    assert model.detail == "check crashed (RuntimeError)"
    assert report.exit_code == 1
    assert report.result("clock").status is Status.OK  # the others still ran


def test_report_json_and_fix_lines(tmp_path: Path) -> None:
    report = run_doctor(_inputs(tmp_path, model_dir=None), skip=frozenset({"providers"}))
    data = json.loads(report.to_json())
    assert data["ok"] is False
    assert {c["name"] for c in data["checks"]} >= {"model", "keys"}
    assert "providers" not in {c["name"] for c in data["checks"]}
    table = format_report(report)
    assert "FAIL  model" in table
    assert "fix: set [engine] model_dir" in table


def _write_config(tmp_path: Path, state: Path, model: Path, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[paths]\nstate_dir = "{state}"\n[engine]\nmodel_dir = "{model}"\n'
        f'providers = ["cpu"]\n{extra}'
    )
    return path


def test_inputs_from_real_config(tmp_path: Path) -> None:
    import tomllib

    path = _write_config(tmp_path, tmp_path / "s", tmp_path / "m")
    cfg = parse_config(tomllib.loads(path.read_text()), source=str(path), base=tmp_path)
    inputs = inputs_from_config(cfg)
    assert inputs.state_dir == tmp_path / "s"
    assert inputs.model_dir == tmp_path / "m"
    assert inputs.providers == ("cpu",)
    assert inputs_from_config(None) == DoctorInputs()


def test_command_prints_table_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="edge-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    add_doctor_command(sub)
    inputs = _inputs(tmp_path)
    assert inputs.model_dir is not None
    good = _write_config(tmp_path, inputs.state_dir, inputs.model_dir)

    args = parser.parse_args(["doctor", "--config", str(good), "--offline", "--json"])
    code = args.func(args)
    data = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in data["checks"]]
    assert names[0] == "config" and "router" not in names
    # The default service user does not exist here and no unit is installed: warnings and
    # failures below are about this machine, not the config.
    assert data["checks"][0]["status"] == "ok"
    assert code == (0 if data["ok"] else 1)

    args = parser.parse_args(["doctor", "--config", str(tmp_path / "missing.toml"), "--offline"])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL  config")
    assert "cannot read config file" in out

    bad = _write_config(tmp_path, inputs.state_dir, inputs.model_dir, "[engine2]\n")
    args = parser.parse_args(["doctor", "--config", str(bad), "--offline"])
    assert args.func(args) == 1
    assert "unknown key 'engine2'" in capsys.readouterr().out

    # The lead may also hand over DoctorInputs directly.
    args = parser.parse_args(["doctor", "--offline"])
    args.config = inputs
    assert args.func(args) == 0
    assert "0 failed" in capsys.readouterr().out


def test_report_lookup() -> None:
    with pytest.raises(KeyError):
        DoctorReport().result("nothing")
    assert DoctorReport().exit_code == 0


def test_the_global_agent_config_reaches_the_doctor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_agent.cli import main

    missing = tmp_path / "elsewhere.toml"
    assert main(["--agent-config", str(missing), "doctor", "--offline"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL  config")
    assert "elsewhere.toml" in out  # the file given, not /etc/edge-agent/agent.toml


# -- the running service (the real systemd is in test_appliance_systemd.py) --------------


def _systemctl(props: dict[str, str], journal: str = "") -> Callable[[Sequence[str]], str]:
    def run(cmd: Sequence[str]) -> str:
        if cmd[0] == "systemctl":
            return "".join(f"{k}={v}\n" for k, v in props.items())
        assert cmd[0] == "journalctl" and "err" in cmd
        return journal

    return run


def test_service_dead_after_failed_starts_fails_with_the_reason(tmp_path: Path) -> None:
    run = _systemctl(
        {
            "LoadState": "loaded",
            "ActiveState": "failed",
            "SubState": "failed",
            "Result": "exit-code",
            "NRestarts": "5",
            "StatusText": "stopping after a failed start: the model did not load",
        },
        journal="edge-agent[99]: ERROR edge_agent.app: start failed: the model did not load\n",
    )
    result = check_service(run=run, systemd_dir=tmp_path)
    assert result.status is Status.FAIL
    assert "last start: exit-code" in result.detail
    assert "the model did not load" in result.detail
    assert "journalctl -u edge-agent.service" in result.fix


def test_service_in_a_restart_loop_fails(tmp_path: Path) -> None:
    props = {"LoadState": "loaded", "ActiveState": "activating", "SubState": "auto-restart"}
    result = check_service(run=_systemctl({**props, "Result": "exit-code"}), systemd_dir=tmp_path)
    assert result.status is Status.FAIL
    assert "last start: exit-code" in result.detail


def test_service_active_passes_and_no_systemd_warns(tmp_path: Path) -> None:
    props = {"LoadState": "loaded", "ActiveState": "active", "SubState": "running"}
    result = check_service(run=_systemctl({**props, "NRestarts": "0"}), systemd_dir=tmp_path)
    assert result.status is Status.OK
    assert "active (running)" in result.detail
    missing = check_service(run=_systemctl(props), systemd_dir=tmp_path / "absent")
    assert missing.status is Status.WARN
    assert "not running here" in missing.detail
    stopped = check_service(
        run=_systemctl({"LoadState": "loaded", "ActiveState": "inactive", "Result": "success"}),
        systemd_dir=tmp_path,
    )
    assert stopped.status is Status.WARN
    assert stopped.fix == "systemctl start edge-agent.service"
