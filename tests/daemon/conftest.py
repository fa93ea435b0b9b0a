"""Fixtures: a real daemon shared by a test module, and a channel to it."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from daemon_harness import RunningAgent, make_config, start_agent, stop_agent


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    running, thread = start_agent(make_config(tmp_path_factory.mktemp("daemon")))
    yield running
    stop_agent(running, thread)


@pytest.fixture
def channel(daemon: RunningAgent) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(daemon.target) as ch:
        yield ch
