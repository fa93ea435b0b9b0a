"""A signed bundle pushed to the real daemon over its Operator service (admin Unix socket).

The daemon verifies it, trial-loads it in a fresh engine worker, switches atomically, and
serves the new model; a tampered push is refused while the old model keeps serving; the
client role may not push; rollback returns to the previous bundle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import pytest
from bundle_fixtures import Fleet
from daemon_harness import DEMO_MODEL, make_config, start_agent, stop_agent

from edge_agent._operator_cli import OperatorTarget
from edge_agent.bundles import pack_bundle
from edge_agent.bundles._push_client import list_remote, push_archive, rollback_remote
from edge_agent.client import ChatOptions, Client
from edge_agent.errors import BundleError, PermissionDenied


def _bundle(fleet: Fleet, root: Path, release: int) -> Path:
    folder = root / f"demo-r{release}"
    import shutil

    shutil.copytree(DEMO_MODEL, folder)
    meta = json.loads((folder / "bundle.json").read_text())
    meta.update(name="edge-demo-mistral", version=f"1.{release}.0", release=release)
    (folder / "bundle.json").write_text(json.dumps(meta, indent=2))
    fleet.sign(folder, "ops")
    archive = root / f"demo-r{release}.tar"
    pack_bundle(folder, archive)
    return archive


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
