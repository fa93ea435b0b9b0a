"""The daemon as an appliance: sd_notify sequence, mDNS advertisement, metrics, status."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import urllib.request
from pathlib import Path

from daemon_harness import make_config, start_agent, stop_agent
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.client import ChatOptions, Client
from edge_agent.discovery import BoxBrowser, DiscoveredBox, DiscoveryConfig, discover
from edge_agent.sdnotify import SystemdNotifier


async def _find(prefix: str) -> DiscoveredBox:
    async with BoxBrowser(interfaces=["127.0.0.1"]) as browser:
        boxes = await browser.wait_for(
            lambda bs: any(b.name.startswith(prefix) for b in bs), timeout_s=15
        )
    return next(b for b in boxes if b.name.startswith(prefix))


def _received(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_notify_sequence_mdns_and_metrics(tmp_path: Path) -> None:
    # A real AF_UNIX datagram socket stands in for systemd.
    notify_path = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(notify_path))
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(notify_path)})
    config = dataclasses.replace(
        make_config(tmp_path),
        discovery=DiscoveryConfig(enabled=True, interfaces=("127.0.0.1",), instance_name="e2e-box"),
    )
    running, thread = start_agent(config, notifier=notifier)
    try:
        before_ready = _received(systemd)
        assert any(m.startswith("READY=1") for m in before_ready), before_ready
        ready_at = next(i for i, m in enumerate(before_ready) if m.startswith("READY=1"))
        assert "STATUS=loading" in "\n".join(before_ready[:ready_at])
        assert "engine ready" in before_ready[ready_at]

        box = asyncio.run(_find("e2e-box"))
        assert box.port == running.agent.ports[0]
        assert box.announcement.model == running.agent.engine.model.name
        assert box.announcement.execution_provider == "cpu"
        cert = running.agent.device_cert
        assert cert is not None
        assert box.fingerprint == cert.fingerprint

        with Client(running.target) as client:
            list(client.chat([("user", "Hi")], ChatOptions(max_tokens=4)))
            status = client.status()
        assert status.tls_fingerprint_sha256 == box.fingerprint
        assert status.device_id == running.agent.device_id
        assert status.pressure.level in ("ok", "elevated", "critical")

        port = running.agent.metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        requests = families["edge_agent_requests"]
        ok_local = [
            s.value
            for s in requests.samples
            if s.labels.get("outcome") == "ok" and s.labels.get("destination") == "local"
        ]
        assert ok_local and ok_local[0] >= 1
    finally:
        stop_agent(running, thread)
    after = _received(systemd)
    assert any(m.startswith("STOPPING=1") for m in after), after
    gone = asyncio.run(discover(2.0, interfaces=["127.0.0.1"]))
    assert not [b for b in gone if b.name.startswith("e2e-box")]
    systemd.close()
