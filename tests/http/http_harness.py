"""Helpers for the HTTP API tests: configs with ``[http]`` on port 0, clients, raw SSE."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
from daemon_harness import RunningAgent, make_config
from openai import OpenAI

from edge_agent.config import AgentConfig, HttpConfig

LOCAL_MODEL = "edge-demo-mistral"

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
}


def http_config(tmp: Path, *, accept_any_token: bool = True, **replace: Any) -> AgentConfig:
    config = make_config(tmp)
    http = HttpConfig(listen=("127.0.0.1:0",), accept_any_token=accept_any_token)
    return dataclasses.replace(config, http=http, **replace)


def base_url(running: RunningAgent) -> str:
    return f"http://127.0.0.1:{running.agent.http_ports[0]}"


def openai_client(running: RunningAgent, *, api_key: str) -> OpenAI:
    return OpenAI(base_url=base_url(running) + "/v1", api_key=api_key, max_retries=0, timeout=60)


def sse_events(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an event stream, checking the framing on the way."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), "every event ends with a blank line"
    events = []
    for block in text.split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 1 and lines[0].startswith("data: "), block
        events.append(lines[0].removeprefix("data: "))
    return events


def post_raw(running: RunningAgent, body: dict[str, Any], **headers: str) -> httpx.Response:
    with httpx.Client(base_url=base_url(running), timeout=60) as http:
        return http.post("/v1/chat/completions", content=json.dumps(body), headers=headers)
