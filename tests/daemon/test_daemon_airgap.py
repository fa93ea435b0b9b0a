"""The daemon's own air gap: while an air-gapped agent runs, Python code in its process cannot
open an outbound connection or look a name up; loopback, link-local and multicast stay open;
the gap lifts with the agent."""

from __future__ import annotations

import dataclasses
import socket
import threading
from pathlib import Path

import pytest
from daemon_harness import make_config, start_agent, stop_agent

from edge_agent._egress import EgressRefused, air_gap_holders
from edge_agent.client import ChatOptions, Client
from edge_agent.config import AgentConfig
from edge_agent.policy import LocalPolicyOverrides


def _air_gapped(tmp_path: Path) -> AgentConfig:
    config = make_config(tmp_path)
    policy = dataclasses.replace(config.policy, overrides=LocalPolicyOverrides(air_gapped=True))
    return dataclasses.replace(config, policy=policy)


def test_air_gapped_agent_refuses_egress_in_its_process(tmp_path: Path) -> None:
    config = _air_gapped(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    running, thread = start_agent(config)
    try:
        assert air_gap_holders() == 1
        # From any thread: a TCP connect off the box, a datagram, a name lookup.
        errors: list[BaseException] = []

        def attempt() -> None:
            for action in (
                lambda: socket.create_connection(("192.0.2.1", 443), timeout=1),
                lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                    b"x", ("198.51.100.7", 53)
                ),
                lambda: socket.getaddrinfo("router.huggingface.co", 443),
                lambda: socket.gethostbyaddr("127.0.0.1"),
            ):
                try:
                    action()
                except EgressRefused as exc:
                    errors.append(exc)

        worker = threading.Thread(target=attempt)
        worker.start()
        worker.join()
        assert len(errors) == 4, errors
        assert all("air-gapped" in str(e) for e in errors)
        # Local traffic is not egress: loopback and mDNS multicast still work.
        socket.create_connection(listener.getsockname(), timeout=1).close()
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("224.0.0.251", 5353))
        with Client(running.target) as client:
            chunks = list(client.chat([("user", "Hi")], ChatOptions(max_tokens=4)))
        assert chunks[-1].provenance is not None
        assert chunks[-1].provenance.destination == "local"
    finally:
        stop_agent(running, thread)
        listener.close()
    assert air_gap_holders() == 0
    try:  # refused, unreachable or timed out, but no longer by the air gap
        socket.create_connection(("192.0.2.1", 443), timeout=0.2).close()
    except EgressRefused:
        pytest.fail("the air gap outlived its agent")
    except OSError:
        pass
