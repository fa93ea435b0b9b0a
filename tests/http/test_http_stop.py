"""Start and staged stop with the HTTP API: a bind failure, a stream that finishes on stop."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import httpx
import pytest
from daemon_harness import start_agent
from http_harness import LOCAL_MODEL, base_url, http_config, sse_events

from edge_agent.errors import ConfigError


def test_stop_lets_a_running_stream_finish_then_refuses(tmp_path: Path) -> None:
    running, thread = start_agent(http_config(tmp_path))
    url = base_url(running)
    body = {
        "model": LOCAL_MODEL,
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "max_tokens": 600,
        "min_tokens": 600,
        "stream": True,
    }
    with (
        httpx.Client(base_url=url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        parts = response.iter_bytes()
        received = [next(parts)]
        # SIGTERM's path, while the answer is still being generated.
        running.loop.call_soon_threadsafe(running.agent.request_stop)
        received.extend(parts)
    events = sse_events(b"".join(received))
    assert events[-1] == "[DONE]", "the stream ran to its end within the grace"
    final = json.loads(events[-2])
    assert final["choices"][0]["finish_reason"] == "length"
    thread.join(timeout=60)
    assert not thread.is_alive()
    with httpx.Client(timeout=5) as http, pytest.raises(httpx.ConnectError):
        http.get(url + "/health")


def test_an_http_address_in_use_fails_the_start_cleanly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = http_config(tmp_path)
        config = dataclasses.replace(
            config, http=dataclasses.replace(config.http, listen=(f"127.0.0.1:{port}",))
        )
        with pytest.raises(ConfigError) as info:
            start_agent(config)
    assert info.value.message.startswith(f"http.listen: cannot listen on 127.0.0.1:{port}")
