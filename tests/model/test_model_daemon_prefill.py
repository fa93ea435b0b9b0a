"""`engine.prefill_chunk_tokens` from the config file to the worker: a real daemon reads a long
prompt in chunks and streams the answer the worker gives when it reads the prompt whole."""

from __future__ import annotations

import dataclasses
import math
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import RunningAgent, make_config, start_agent, stop_agent

from edge_agent.client import ChatOptions, Client
from edge_agent.config import EngineConfig, parse_config
from edge_agent.engine._types import GenerationRequest, Message
from edge_agent.engine._worker import _Out, _Worker
from edge_agent.errors import ConfigError

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
CHUNK = 24
LONG = " ".join(["Open a file with open(path) and read it in a with block."] * 12)


def _engine_from_toml(text: str, tmp: Path) -> EngineConfig:
    return parse_config(tomllib.loads(text), source="agent.toml", base=tmp).engine


def test_the_budget_is_read_from_the_engine_table(tmp_path: Path) -> None:
    assert EngineConfig().prefill_chunk_tokens == 128
    engine = _engine_from_toml("[engine]\nprefill_chunk_tokens = 0\n", tmp_path)
    assert engine.prefill_chunk_tokens == 0  # 0: every prompt read whole
    with pytest.raises(ConfigError) as caught:
        _engine_from_toml("[engine]\nprefill_chunk_tokens = -1\n", tmp_path)
    assert "engine.prefill_chunk_tokens" in str(caught.value)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    config = make_config(tmp_path_factory.mktemp("prefill"))
    engine = dataclasses.replace(config.engine, prefill_chunk_tokens=CHUNK)
    running, thread = start_agent(dataclasses.replace(config, engine=engine))
    yield running
    stop_agent(running, thread)


def _whole(tokens: int) -> tuple[str, int]:
    """The answer and prompt size from a worker that reads every prompt whole."""
    spec: dict[str, Any] = {
        "model_dir": str(DEMO),
        "providers": ["cpu"],
        "provider_options": {},
        "intra_op_threads": 1,
        "thread_spinning": False,
        "lanes": 1,
        "max_batch_size": 4,
        "regroup_max_tokens": 0,
        "prefill_chunk_tokens": 0,
    }
    worker = _Worker(None, spec)  # type: ignore[arg-type]  # driven here, no pipe
    job = GenerationRequest(
        messages=(Message("user", LONG),), max_tokens=tokens, min_tokens=tokens
    ).to_job()
    text, out = "", _Out()
    worker.submit(1, job, out)
    while not out.done:
        text += "".join(delta for _, delta, _ in out.deltas)
        out = _Out()
        worker.advance(out)
    text += "".join(delta for _, delta, _ in out.deltas)
    return text, out.done[0][2]


def test_a_long_prompt_is_chunked_by_the_daemon_and_answers_as_read_whole(
    daemon: RunningAgent,
) -> None:
    before = daemon.call(daemon.agent.engine.probe())["prefill_chunks"]
    with Client(daemon.target) as client:
        chunks = list(
            client.chat([("user", LONG)], ChatOptions(max_tokens=16, min_tokens=16), timeout=60)
        )
    usage = chunks[-1].usage
    assert usage is not None
    text, prompt = _whole(16)
    assert usage.prompt_tokens == prompt > CHUNK
    assert usage.completion_tokens == 16
    assert "".join(c.delta for c in chunks) == text
    after = daemon.call(daemon.agent.engine.probe())
    assert after["prefill_chunks"] - before == math.ceil(prompt / CHUNK)
    assert after["active"] == after["prefilling"] == 0
    # The same count reaches /metrics with the next pressure sample.
    port = daemon.agent.metrics_port
    assert port is not None
    wanted = after["prefill_chunks"]
    deadline = time.monotonic() + 15
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        exported = [
            float(line.split()[-1])
            for line in text.decode().splitlines()
            if line.startswith("edge_agent_engine_prefill_chunks_total ")
        ]
        if exported and exported[0] >= wanted:
            break
        assert time.monotonic() < deadline, f"metrics show {exported}, the worker {wanted}"
        time.sleep(0.2)
    assert exported == [float(wanted)]
