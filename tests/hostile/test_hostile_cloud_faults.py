"""Cloud faults against the loopback stand-in: no hung stream, the breaker opens and closes,
local answers continue, an untrusted TLS certificate is refused."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from daemon_harness import start_agent, stop_agent
from fake_router import FakeRouter
from hostile_cloud import (
    TOKEN,
    escalating_config,
    run_cloud_faults,
    run_tls_failure,
    untrusted_tls_router,
)
from hostile_common import LoopErrors, Tally


def _run(tmp_path: Path, caplog: pytest.LogCaptureFixture, rounds: int) -> Tally:
    caplog.set_level(logging.INFO)
    tally = Tally("cloud faults")
    router = FakeRouter(TOKEN).start()
    try:
        running, thread = start_agent(escalating_config(tmp_path, router.base_url))
        errors = LoopErrors(running)
        try:
            run_cloud_faults(running, router, tally, rounds)
            errors.drain(tally)
        finally:
            errors.close()
            stop_agent(running, thread)
    finally:
        router.stop()
    assert TOKEN not in caplog.text
    return tally


def test_cloud_faults_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tally = _run(tmp_path, caplog, rounds=16)
    assert tally.clean, (tally.summary(), tally.figures)
    states = tally.figures["breaker_states"]
    assert "open" in states and "closed" in states, states
    reasons = tally.figures["reasons"]
    assert any(r.startswith("cloud.") for r in reasons), reasons
    assert any(r.startswith("local.") for r in reasons), reasons


@pytest.mark.slow
def test_cloud_faults_full(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tally = _run(tmp_path, caplog, rounds=200)
    assert tally.clean, (tally.summary(), tally.figures)


def test_untrusted_router_certificate_is_refused_and_answers_stay_local(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    router = untrusted_tls_router(tmp_path).start()
    tally = Tally("cloud TLS")
    try:
        running, thread = start_agent(
            escalating_config(tmp_path, f"https://127.0.0.1:{router.port}/v1")
        )
        try:
            run_tls_failure(running, router, tally, 4)
        finally:
            stop_agent(running, thread)
    finally:
        router.stop()
    assert tally.clean, (tally.summary(), tally.figures)
    assert tally.figures["tls_failure_kind"]
    assert TOKEN not in caplog.text


def test_a_client_that_never_finishes_its_tls_handshake_does_not_stall_the_stand_in(
    tmp_path: Path,
) -> None:
    # A cancelled connect can leave a half-open TLS connection in the client's process;
    # the stand-in once ran handshakes in its accept loop and stop() waited on it for good.
    router = untrusted_tls_router(tmp_path).start()
    silent = socket.create_connection(("127.0.0.1", router.port))
    try:
        time.sleep(0.1)  # let the handler thread take it and wait for a ClientHello
        stopper = threading.Thread(target=router.stop, daemon=True)
        stopper.start()
        stopper.join(timeout=3)  # well under the handler timeout (10 s): shut, not timed out
        assert not stopper.is_alive(), "stop() waited on a connection that never handshook"
    finally:
        silent.close()
