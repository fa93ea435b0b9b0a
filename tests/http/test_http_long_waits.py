"""Long waits before the first token: SSE keep-alive pings, and the client's deadline
(``X-Edge-Deadline-Ms``) ending them with 504 and a cancelled generation.

The daemon here reads prompts one token per step (``engine.prefill_chunk_tokens = 1``), so a
prompt of a thousand tokens keeps the first token back for a thousand engine steps, as a
long prompt on a large model does. Prefix reuse is off: every request here repeats one
prompt, and a reused lane would skip the very wait these tests need.
"""

from __future__ import annotations

import dataclasses
import json
import time
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
    config = make_config(
        tmp_path_factory.mktemp("long-waits"), prefill_chunk_tokens=1, prefix_cache_lanes=0
    )
    http = HttpConfig(listen=("127.0.0.1:0",), accept_any_token=True, sse_ping_interval_s=PING_S)
    running, thread = start_agent(dataclasses.replace(config, http=http))
    yield running
    stop_agent(running, thread)


@pytest.fixture(scope="module")
def deadline_ms(slow_prefill: RunningAgent) -> str:
    """A deadline that passes while the long prompt is being read on this machine: a third
    of the whole answer's time, measured here (which also warms the daemon up)."""
    started = time.monotonic()
    with httpx.Client(base_url=base_url(slow_prefill), timeout=60) as http:
        assert http.post("/v1/chat/completions", json=_body()).status_code == 200
    return str(max(20, int((time.monotonic() - started) * 1000 / 3)))


def _cancelled(running: RunningAgent) -> float:
    value = running.agent.metrics.registry.get_sample_value(
        "edge_agent_requests_total", {"outcome": "cancelled", "destination": "local"}
    )
    return value or 0.0


def _busy(running: RunningAgent) -> bool:
    stats = running.call(running.agent.engine.probe())
    return bool(stats["active"] or stats["pending_in_engines"] or stats["waiting"])


def _wait_let_go(
    running: RunningAgent, cancelled_before: float, request_id: str, why: str = "deadline"
) -> None:
    """The generation was cancelled (not run to its end), the worker let go of it, and the
    audit says why."""
    until = time.monotonic() + 10
    while (_cancelled(running) == cancelled_before or _busy(running)) and (
        time.monotonic() < until
    ):
        time.sleep(0.05)
    assert _cancelled(running) == cancelled_before + 1
    assert not _busy(running), "the worker let go of the request"
    record = next(r for r in running.agent.audit.tail(10) if r.request_id == request_id)
    assert [a["outcome"] for a in record.attempt_list()] == [why]


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


def test_leaving_while_only_pings_came_cancels_the_prefill(slow_prefill: RunningAgent) -> None:
    before = _cancelled(slow_prefill)
    with (
        httpx.Client(base_url=base_url(slow_prefill), timeout=60) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json=_body(stream=True),
            headers={"X-Request-Id": "gone-in-prefill"},
        ) as response,
    ):
        assert response.status_code == 200
        assert next(response.iter_lines()) == ": ping"
    # The connection closed while the prompt was still being read.
    _wait_let_go(slow_prefill, before, "gone-in-prefill", why="cancelled")


def _expired(error: dict[str, Any]) -> None:
    assert error["type"] == "server_error"
    assert error["code"] == "timeout"
    assert "X-Edge-Deadline-Ms" in error["message"]


def test_deadline_ends_a_non_streaming_answer_with_504(
    slow_prefill: RunningAgent, deadline_ms: str
) -> None:
    before = _cancelled(slow_prefill)
    with httpx.Client(base_url=base_url(slow_prefill), timeout=60) as http:
        response = http.post(
            "/v1/chat/completions",
            json=_body(),
            headers={"X-Edge-Deadline-Ms": deadline_ms, "X-Request-Id": "deadline-whole"},
        )
    assert response.status_code == 504  # the whole answer takes three times the deadline
    _expired(response.json()["error"])
    assert response.headers["x-request-id"] == "deadline-whole"
    _wait_let_go(slow_prefill, before, "deadline-whole")


def test_deadline_during_a_started_stream_is_an_error_event(
    slow_prefill: RunningAgent, deadline_ms: str
) -> None:
    before = _cancelled(slow_prefill)
    with (
        httpx.Client(base_url=base_url(slow_prefill), timeout=60) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json=_body(stream=True),
            headers={"X-Edge-Deadline-Ms": deadline_ms, "X-Request-Id": "deadline-stream"},
        ) as response,
    ):
        # Pings every 10 ms had started the stream before the deadline passed.
        assert response.status_code == 200
        blocks = response.read().decode().split("\n\n")[:-1]
    data = [b.removeprefix("data: ") for b in blocks if b.startswith("data: ")]
    assert len(data) == 1, "the error, and no [DONE]"
    _expired(json.loads(data[0])["error"])
    _wait_let_go(slow_prefill, before, "deadline-stream")


def test_an_unreached_deadline_changes_nothing(daemon: RunningAgent) -> None:
    body = {"model": LOCAL_MODEL, "messages": [{"role": "user", "content": "Hi."}]}
    with httpx.Client(base_url=base_url(daemon), timeout=60) as http:
        plain = http.post("/v1/chat/completions", json={**body, "max_tokens": 6})
        timed = http.post(
            "/v1/chat/completions",
            json={**body, "max_tokens": 6},
            headers={"X-Edge-Deadline-Ms": "60000"},
        )
    assert plain.status_code == timed.status_code == 200
    assert timed.json()["choices"] == plain.json()["choices"]  # greedy: the same answer


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "soon", "86400001", "1 000"])
def test_bad_deadline_header_is_400_naming_it(daemon: RunningAgent, value: str) -> None:
    with httpx.Client(base_url=base_url(daemon), timeout=60) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": LOCAL_MODEL, "messages": [{"role": "user", "content": "Hi."}]},
            headers={"X-Edge-Deadline-Ms": value},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "X-Edge-Deadline-Ms"
    assert error["message"].startswith("X-Edge-Deadline-Ms: must be")
