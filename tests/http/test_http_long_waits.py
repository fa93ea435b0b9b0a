"""Long waits before the first token: SSE keep-alive pings.

The daemon here reads prompts one token per step (``engine.prefill_chunk_tokens = 1``), so a
prompt of a thousand tokens keeps the first token back for a thousand engine steps, as a
long prompt on a large model does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from daemon_harness import RunningAgent, make_config, start_agent, stop_agent
from http_harness import LOCAL_MODEL, base_url, openai_client

from edge_agent.config import HttpConfig

PING_S = 0.01
LONG = "The archive keeps every record of the harbour, its ships, their cargo and crews. " * 60


@pytest.fixture(scope="module")
def slow_prefill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    config = make_config(tmp_path_factory.mktemp("long-waits"), prefill_chunk_tokens=1)
    http = HttpConfig(listen=("127.0.0.1:0",), accept_any_token=True, sse_ping_interval_s=PING_S)
    running, thread = start_agent(dataclasses.replace(config, http=http))
    yield running
    stop_agent(running, thread)


def _body(**extra: Any) -> dict[str, Any]:
    return {
        "model": LOCAL_MODEL,
        "messages": [{"role": "user", "content": LONG}],
        "max_tokens": 4,
        **extra,
    }


def test_pings_arrive_while_the_first_token_is_delayed(slow_prefill: RunningAgent) -> None:
    with (
        httpx.Client(base_url=base_url(slow_prefill), timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=_body(stream=True)) as response,
    ):
        assert response.status_code == 200
        raw = response.read().decode()
    assert raw.endswith("\n\n")
    blocks = raw.split("\n\n")[:-1]  # every event, comment or data, is one line
    assert all("\n" not in b for b in blocks), blocks
    first_data = next(i for i, b in enumerate(blocks) if b.startswith("data: "))
    # Only keep-alive comments precede the first chunk.
    assert first_data > 0, "no keep-alive ping while the prompt was read"
    assert set(blocks[:first_data]) == {": ping"}
    assert all(b.startswith(("data: ", ": ping")) for b in blocks)
    events = [b.removeprefix("data: ") for b in blocks if b.startswith("data: ")]
    assert events[-1] == "[DONE]"
    content = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
    )
    # The openai SDK reads the same stream, pings and all, as if they were not there.
    with openai_client(slow_prefill, api_key="sk-any") as client:
        chunks = list(client.chat.completions.create(**_body(stream=True)))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert chunks[-1].choices[0].finish_reason == "length"
