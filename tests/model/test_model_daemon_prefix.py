"""Prefix reuse through a real daemon: the chat path sets the partition (client and data
class), the second turn of a conversation reuses the first's KV cache, and hits, misses and
reused tokens reach /metrics."""

from __future__ import annotations

import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import RunningAgent, make_config, start_agent, stop_agent

from edge_agent.chat import DataClass
from edge_agent.client import ChatOptions, Client
from edge_agent.config import EngineConfig, parse_config
from edge_agent.errors import ConfigError

CHUNK = 24
SYSTEM = " ".join(["Answer questions about Python files and modules, briefly."] * 8)


def test_the_cache_size_is_read_from_the_engine_table(tmp_path: Path) -> None:
    assert EngineConfig().prefix_cache_lanes == 2
    text = "[engine]\nprefix_cache_lanes = 0\n"
    engine = parse_config(tomllib.loads(text), source="agent.toml", base=tmp_path).engine
    assert engine.prefix_cache_lanes == 0  # 0: no reuse
    with pytest.raises(ConfigError) as caught:
        parse_config(
            tomllib.loads("[engine]\nprefix_cache_lanes = -1\n"), source="agent.toml", base=tmp_path
        )
    assert "engine.prefix_cache_lanes" in str(caught.value)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    config = make_config(tmp_path_factory.mktemp("prefix"), prefill_chunk_tokens=CHUNK)
    running, thread = start_agent(config)
    yield running
    stop_agent(running, thread)


def _chat(daemon: RunningAgent, messages: list[tuple[str, str]], data_class: DataClass) -> str:
    options = ChatOptions(max_tokens=12, data_class=data_class)
    with Client(daemon.target) as client:
        chunks = list(client.chat(messages, options, timeout=60))
    assert chunks[-1].finish_reason in ("stop", "length")
    return "".join(c.delta for c in chunks)


def _metric(daemon: RunningAgent, name: str) -> float:
    port = daemon.agent.metrics_port
    assert port is not None
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return values[0] if values else 0.0


def test_a_second_turn_reuses_the_first_and_metrics_show_it(daemon: RunningAgent) -> None:
    probe = daemon.call(daemon.agent.engine.probe())
    assert probe["cached_lanes"] == 0
    turn = [("system", SYSTEM), ("user", "What is a module?")]
    answer = _chat(daemon, turn, DataClass.INTERNAL)
    after_first = daemon.call(daemon.agent.engine.probe())
    assert after_first["cached_lanes"] == 1 and after_first["prefix_misses"] == 1
    follow = [*turn, ("assistant", answer), ("user", "And a package?")]
    # Another data class of the same client: a partition of its own, no reuse.
    _chat(daemon, follow, DataClass.CONFIDENTIAL)
    other = daemon.call(daemon.agent.engine.probe())
    assert other["prefix_hits"] == 0 and other["prefix_misses"] == 2
    _chat(daemon, follow, DataClass.INTERNAL)
    second = daemon.call(daemon.agent.engine.probe())
    assert second["prefix_hits"] == 1
    reused = second["prefix_reused_tokens"]
    assert reused > 0
    # The reused tokens were not read again.
    read = second["prompt_tokens_read"] - other["prompt_tokens_read"]
    confidential_read = other["prompt_tokens_read"] - after_first["prompt_tokens_read"]
    assert read == confidential_read - reused  # the same prompt, read whole there
    # The counts reach /metrics with the next pressure sample.
    deadline = time.monotonic() + 15
    hit = 'edge_agent_engine_prefix_cache_requests_total{result="hit"}'
    while _metric(daemon, hit) < 1:
        assert time.monotonic() < deadline, "no prefix hit on /metrics"
        time.sleep(0.2)
    assert _metric(daemon, 'edge_agent_engine_prefix_cache_requests_total{result="miss"}') == 2
    assert _metric(daemon, "edge_agent_engine_prefix_reused_tokens_total") == reused
    assert _metric(daemon, "edge_agent_engine_prefix_cached_lanes") >= 1
