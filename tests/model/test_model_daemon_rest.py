"""`engine.rest_delay_s`: a real daemon's worker gives back a burst's memory only after it has
been idle that long, so a client sending requests one after another finds the batch Engines
and heap pages of the last one still in place."""

from __future__ import annotations

import dataclasses
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import RunningAgent, make_config, start_agent, stop_agent

from edge_agent.client import ChatOptions, Client
from edge_agent.config import EngineConfig, parse_config
from edge_agent.errors import ConfigError

DELAY = 3.0  # long beside a probe's round trip, short beside the test's patience


def test_the_delay_is_read_from_the_engine_table(tmp_path: Path) -> None:
    assert EngineConfig().rest_delay_s == 1.0
    read = parse_config(tomllib.loads("[engine]\nrest_delay_s = 0\n"), source="t", base=tmp_path)
    assert read.engine.rest_delay_s == 0.0
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads("[engine]\nrest_delay_s = -1\n"), source="t", base=tmp_path)
    assert "engine.rest_delay_s" in str(caught.value)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    config = make_config(tmp_path_factory.mktemp("rest"))
    engine = dataclasses.replace(config.engine, rest_delay_s=DELAY)
    running, thread = start_agent(dataclasses.replace(config, engine=engine))
    yield running
    stop_agent(running, thread)


def _ask(daemon: RunningAgent, text: str) -> None:
    with Client(daemon.target) as client:
        chunks = list(client.chat([("user", text)], ChatOptions(max_tokens=4), timeout=60))
    assert chunks[-1].finish_reason in ("stop", "length")


def _rests(daemon: RunningAgent) -> int:
    return int(daemon.call(daemon.agent.engine.probe())["rests"])


def test_the_worker_rests_once_after_requests_sent_one_after_another(
    daemon: RunningAgent,
) -> None:
    _ask(daemon, "warm up")
    deadline = time.monotonic() + DELAY + 20
    while _rests(daemon) == 0:  # the warm-up's rest, once its delay has passed
        assert time.monotonic() < deadline, "the idle worker never rested"
        time.sleep(0.2)
    before = _rests(daemon)
    for i in range(3):
        _ask(daemon, f"question {i}")
    # Requests one after another, each within the delay of the last: no rest between them.
    last = time.monotonic()
    assert _rests(daemon) == before
    deadline = last + DELAY + 20
    while _rests(daemon) == before:
        assert time.monotonic() < deadline, "the idle worker never rested"
        time.sleep(0.1)
    assert time.monotonic() - last >= DELAY / 2  # not at once: after the delay
    assert _rests(daemon) == before + 1  # one rest for the run of requests
    time.sleep(0.5)
    assert _rests(daemon) == before + 1  # and none while it stays idle
