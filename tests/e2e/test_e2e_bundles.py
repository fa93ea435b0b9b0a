"""A signed bundle pushed to the real daemon over its Operator service (admin Unix socket).

The daemon verifies it, trial-loads it in a fresh engine worker, switches atomically, and
serves the new model; a tampered push is refused while the old model keeps serving; the
client role may not push; rollback returns to the previous bundle. Issue 15: a signed bundle
that does not load leaves the rollback target in place, an old bundle of another name is not
replayed, a lost bundle is reported (or refused, by config), the USB inbox shrugs off a FIFO
and SIGTERM, and `edge-agent audit list` shows every bundle event.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from bundle_fixtures import Fleet, signed_model_archive
from daemon_harness import DEMO_MODEL, make_config, start_agent, stop_agent

from edge_agent._operator_cli import OperatorTarget
from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent.bundles._push_client import (
    list_remote,
    list_remote_state,
    push_archive,
    rollback_remote,
)
from edge_agent.cli import main as cli_main
from edge_agent.client import ChatOptions, Client
from edge_agent.errors import BundleError, PermissionDenied


def _bundle(
    fleet: Fleet,
    root: Path,
    release: int,
    *,
    name: str = "edge-demo-mistral",
    break_model: bool = False,
) -> Path:
    return signed_model_archive(
        fleet, DEMO_MODEL, root, release, name=name, break_model=break_model
    )


def _served_version(target: str) -> str:
    with Client(target) as client:
        chunks = list(client.chat([("user", "Hello")], ChatOptions(max_tokens=4)))
    assert chunks[-1].provenance is not None
    return chunks[-1].provenance.model_version


def test_push_activate_refuse_tampered_rollback(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    config = make_config(tmp_path)
    trust_path = config.bundles.paths(config.paths.state_dir).trust_store
    fleet.trust(trust_path, "ops")
    running, thread = start_agent(config)
    admin = OperatorTarget(address=f"unix:{config.tls.admin_socket}", insecure=True)
    client_role = OperatorTarget(address=running.target, insecure=True)
    try:
        first = _served_version(running.target)
        archive = _bundle(fleet, tmp_path, release=2)

        # The anonymous loopback caller has the client role: no pushing bundles.
        with pytest.raises(PermissionDenied):
            push_archive(client_role, archive, progress=False)

        outcome = push_archive(admin, archive, progress=False)
        assert outcome.outcome == "activated"
        assert first != "1.2.0"
        assert _served_version(running.target) == "1.2.0"

        # A bit flip in the weights of a correctly named, higher release is refused.
        bad = _bundle(fleet, tmp_path / "bad", release=3)
        data = bytearray(bad.read_bytes())
        marker = data.find(b"model.onnx.data")
        data[marker + 2048] ^= 0x01  # inside the weights, past the tar header
        bad.write_bytes(bytes(data))
        with pytest.raises((BundleError, grpc.RpcError)):
            push_archive(admin, bad, progress=False)
        assert _served_version(running.target) == "1.2.0"

        push_archive(admin, _bundle(fleet, tmp_path, release=4), progress=False)
        assert _served_version(running.target) == "1.4.0"
        listed = list_remote(admin)
        assert any(b["active"] and b["version"] == "1.4.0" for b in listed)
        rolled = rollback_remote(admin)
        assert rolled["version"] == "1.2.0"
        assert _served_version(running.target) == "1.2.0"
    finally:
        stop_agent(running, thread)


def test_boot_serves_the_active_bundle(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    config = make_config(tmp_path)
    fleet.trust(config.bundles.paths(config.paths.state_dir).trust_store, "ops")
    running, thread = start_agent(config)
    admin = OperatorTarget(address=f"unix:{config.tls.admin_socket}", insecure=True)
    try:
        push_archive(admin, _bundle(fleet, tmp_path, release=5), progress=False)
    finally:
        stop_agent(running, thread)
    # A restart (even with another fallback model configured) serves the installed bundle.
    config = dataclasses.replace(config, engine=dataclasses.replace(config.engine))
    running, thread = start_agent(config)
    try:
        assert _served_version(running.target) == "1.5.0"
    finally:
        stop_agent(running, thread)


def _audit_list(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What `edge-agent audit list` prints for the box, bundle lines only."""
    capsys.readouterr()
    assert cli_main(["audit", "list", "--state-dir", str(state_dir), "--limit", "200"]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if " bundle " in line]


def test_failed_push_keeps_the_fallback_and_every_event_is_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = Fleet(tmp_path / "fleet")
    config = make_config(tmp_path)
    fleet.trust(config.bundles.paths(config.paths.state_dir).trust_store, "ops")
    running, thread = start_agent(config)
    admin = OperatorTarget(address=f"unix:{config.tls.admin_socket}", insecure=True)
    try:
        push_archive(admin, _bundle(fleet, tmp_path, 20), progress=False)
        push_archive(admin, _bundle(fleet, tmp_path, 21), progress=False)
        broken = _bundle(fleet, tmp_path / "broken", 22, break_model=True)
        with pytest.raises(BundleError, match="trial load of edge-demo-mistral failed"):
            push_archive(admin, broken, progress=False)
        assert _served_version(running.target) == "1.21.0"
        # A lab build the fleet signed long ago, under another name: not a way back.
        lab = _bundle(fleet, tmp_path / "lab", 1, name="edge-demo-lab")
        with pytest.raises(BundleError, match="anti-rollback: release 1 of edge-demo-lab"):
            push_archive(admin, lab, progress=False)
        listed = list_remote(admin)
        assert [(b["version"], b["active"]) for b in listed] == [
            ("1.21.0", True),
            ("1.20.0", False),
        ]
        # The refused push did not cost the rollback target.
        assert rollback_remote(admin)["version"] == "1.20.0"
        assert _served_version(running.target) == "1.20.0"
    finally:
        stop_agent(running, thread)
    lines = _audit_list(config.paths.state_dir, capsys)
    events = [line.split()[3] for line in lines]
    assert events == [
        *["received", "activated"] * 2,
        *["received", "refused"] * 2,
        "rolled_back",
    ]
    assert "trial load of edge-demo-mistral failed" in lines[5]
    assert "anti-rollback" in lines[7]
    assert "edge-demo-mistral 1.20.0@release 20" in lines[8]


def _serve(tmp_path: Path, extra: str = "") -> tuple[subprocess.Popen[bytes], Path]:
    """The real `edge-agent serve` process, admin socket only, an inbox folder configured."""
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[paths]\nstate_dir = "state"\nruntime_dir = "run"\n'
        f'[server]\nlisten = ["unix:{tmp_path}/run/chat.sock"]\ngrace_s = 5\n'
        f'[engine]\nmodel_dir = "{DEMO_MODEL}"\n'
        "[metrics]\nenabled = false\n[discovery]\nenabled = false\n"
        f'[bundles]\ninbox_dir = "{tmp_path}/usb"\ninbox_poll_seconds = 0.2\n{extra}'
    )
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "serve", "--config", str(config)], stderr=log
    )
    log.close()
    return proc, tmp_path / "run" / "admin.sock"


def _wait_for(what: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while not what():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


def test_inbox_fifo_and_slow_writer_do_not_block_installs_or_shutdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = Fleet(tmp_path / "fleet")
    fleet.trust(tmp_path / "state" / "trust" / "truststore.json", "ops")
    usb = tmp_path / "usb"
    usb.mkdir()
    os.mkfifo(usb / "evil.tar")  # nobody ever writes it: opening it the old way waits for ever
    proc, admin_sock = _serve(tmp_path)
    log = tmp_path / "daemon.log"
    try:
        archive = _bundle(fleet, tmp_path / "src", 30)
        (usb / "r30.tar.partial").write_bytes(archive.read_bytes())
        (usb / "r30.tar.partial").rename(usb / "r30.tar")
        _wait_for(lambda: (usb / "done" / "r30.tar").exists(), proc, log)
        assert (usb / "rejected" / "evil.tar.reason.txt").read_text() == "not a regular file\n"
        admin = OperatorTarget(address=f"unix:{admin_sock}", insecure=True)
        assert [b["version"] for b in list_remote(admin) if b["active"]] == ["1.30.0"]
        # A slow writer: half a file, then a pause of many poll intervals, then the rest.
        data = _bundle(fleet, tmp_path / "src", 31).read_bytes()
        slow = usb / "r31.tar"
        slow.write_bytes(data[: len(data) // 2])
        time.sleep(2.0)  # ten polls with nothing changing: not taken, not rejected
        assert slow.exists() and not (usb / "rejected" / "r31.tar").exists()
        with slow.open("ab") as f:
            f.write(data[len(data) // 2 :])
        _wait_for(lambda: (usb / "done" / "r31.tar").exists(), proc, log)
        assert [b["version"] for b in list_remote(admin) if b["active"]] == ["1.31.0"]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "bundle inbox_rejected (-, from inbox): evil.tar: not a regular file" in text
    assert "bundle activated (edge-demo-mistral 1.30.0 release 30, from inbox)" in text
    events = [line.split()[3] for line in _audit_list(tmp_path / "state", capsys)]
    assert events == ["inbox_rejected", "received", "activated", "received", "activated"]
    assert "r31.tar has no tar end marker yet" in text


def test_a_lost_bundle_is_reported_degraded_or_refused_by_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = Fleet(tmp_path / "fleet")
    config = make_config(tmp_path)
    fleet.trust(config.bundles.paths(config.paths.state_dir).trust_store, "ops")
    running, thread = start_agent(config)
    admin = OperatorTarget(address=f"unix:{config.tls.admin_socket}", insecure=True)
    try:
        push_archive(admin, _bundle(fleet, tmp_path, 40), progress=False)
    finally:
        stop_agent(running, thread)
    slot = running.agent.bundles.active_model_dir()
    assert slot is not None
    (slot / "model.onnx.data").write_bytes(b"rot")  # the only bundle fails verify_on_start

    running, thread = start_agent(config)
    try:
        with Client(running.target) as client:
            status = client.status()
        assert status.state == pb.SERVING_STATE_DEGRADED
        assert status.active_model.name == "edge-demo-mistral"  # the built-in demo model
        assert running.agent.status_line().endswith("no signed bundle: degraded")
        _, problem = list_remote_state(admin)
        assert "no valid signed bundle is installed" in problem
        capsys.readouterr()
        argv = ["bundle", "list", "--insecure", "--target", f"unix:{config.tls.admin_socket}"]
        assert cli_main(argv) == 0
        printed = capsys.readouterr()
        assert json.loads(printed.out) == []
        assert printed.err.startswith("warning: no valid signed bundle is installed")
        assert _served_version(running.target) == "0.1.0"  # still answers, as configured
    finally:
        stop_agent(running, thread)

    refuse = dataclasses.replace(
        config, bundles=dataclasses.replace(config.bundles, without_bundle="refuse")
    )
    running, thread = start_agent(refuse)
    try:
        with pytest.raises(grpc.RpcError) as info:
            _served_version(running.target)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no valid signed model bundle" in (info.value.details() or "")
        # The operator service stays up: a good push ends the refusal.
        push_archive(admin, _bundle(fleet, tmp_path / "fix", 41), progress=False)
        assert _served_version(running.target) == "1.41.0"
    finally:
        stop_agent(running, thread)
    events = [line.split()[3] for line in _audit_list(config.paths.state_dir, capsys)]
    assert events[2:] == ["dropped", "fallback", "fallback", "received", "activated"]
