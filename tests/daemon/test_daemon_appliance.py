"""What an appliance needs from the daemon itself: a frozen worker is noticed and replaced,
mDNS claims nothing it does not serve, and an installed box wants a token on loopback."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from daemon_harness import make_config, start_agent, stop_agent

from edge_agent.client import ChatOptions, Client
from edge_agent.config import parse_config
from edge_agent.discovery import DiscoveryConfig
from edge_agent.engine._liveness import LivenessWatch, read_cpu_ticks


def _wait(what: str, check: object, timeout: float = 20.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_frozen_worker_is_replaced_and_counted(tmp_path: Path) -> None:
    config = make_config(tmp_path, ping_interval_s=0.1, liveness_timeout_s=0.6)
    running, thread = start_agent(config)
    engine = running.agent.engine
    try:
        handle = engine._active
        assert handle is not None and handle.pid is not None
        frozen = handle.pid
        os.kill(frozen, signal.SIGSTOP)
        _wait("a new worker", lambda: engine._active is not None and engine._active.pid != frozen)
        _wait("ready again", lambda: engine.state == "ready")
        status = engine.status()
        assert status.wedged_restarts == 1
        assert status.restarts == 1
        assert status.last_sign_of_life_age_s < 5
        with Client(running.target) as client:
            chunks = list(client.chat([("user", "Hi")], ChatOptions(max_tokens=4)))
        assert chunks[-1].finish_reason in ("stop", "length")
        wire = Client(running.target)
        with wire:
            assert wire.status().engine.wedged_restarts == 1
    finally:
        stop_agent(running, thread)
    # SIGKILL reaches a stopped process: nothing is left behind.
    with pytest.raises(ProcessLookupError):
        os.kill(frozen, 0)


def test_liveness_counts_a_busy_worker_as_alive_and_a_stopped_one_as_silent() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        watch = LivenessWatch(busy.pid)
        time.sleep(0.3)
        assert watch.missed() < 0.05  # computing: as good as an answer
        time.sleep(0.3)
        assert watch.missed() < 0.05
        os.kill(busy.pid, signal.SIGSTOP)
        _wait("the stop to take", lambda: read_cpu_ticks(busy.pid) is None, 5)
        watch.missed()  # the last ticks it burned before stopping
        time.sleep(0.3)
        assert watch.missed() >= 0.3
        time.sleep(0.3)
        assert watch.missed() >= 0.6
    finally:
        busy.kill()
        busy.wait()


def test_loopback_only_daemon_advertises_nothing_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = dataclasses.replace(make_config(tmp_path), discovery=DiscoveryConfig(enabled=True))
    with caplog.at_level(logging.INFO, logger="edge_agent"):
        running, thread = start_agent(config)
        try:
            assert running.agent._advertiser is None
        finally:
            stop_agent(running, thread)
    lines = [r for r in caplog.records if "mDNS" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.INFO
    assert "listens on no LAN address" in lines[0].getMessage()
    assert lines[0].exc_info is None


def test_installed_config_refuses_anonymous_loopback(tmp_path: Path) -> None:
    installed = parse_config(
        {"paths": {"state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")}},
        source="<installed>",
        base=tmp_path,
    )
    assert installed.auth.allow_anonymous_loopback is False
    demo = make_config(tmp_path)
    config = dataclasses.replace(demo, auth=installed.auth)
    running, thread = start_agent(config)
    try:
        with Client(running.target) as anonymous, pytest.raises(grpc.RpcError) as refused:
            list(anonymous.chat([("user", "Hi")], ChatOptions(max_tokens=4)))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The admin socket (root and the edge-agent group on a box) still serves.
        with Client(f"unix:{config.tls.admin_socket}") as admin:
            chunks = list(admin.chat([("user", "Hi")], ChatOptions(max_tokens=4)))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finally:
        stop_agent(running, thread)
