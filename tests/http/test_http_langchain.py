"""LangChain's ChatOpenAI pointed at the box: an answer and a forced tool call, loopback only."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import jsonschema
import pytest
from daemon_harness import RunningAgent
from http_harness import LOCAL_MODEL, WEATHER_TOOL, base_url
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection and name lookup of the test must stay on this host (no LangSmith
    tracing, no tiktoken download, no telemetry)."""
    seen: list[Any] = []
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            assert ipaddress.ip_address(address[0]).is_loopback, address
        seen.append(address)
        connect(self, address)

    lookup = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        assert host in ("127.0.0.1", "localhost", "::1"), host
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return seen


def _llm(daemon: RunningAgent, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=base_url(daemon) + "/v1",
        api_key="sk-anything",  # type: ignore[arg-type]  # pydantic turns it into SecretStr
        model=LOCAL_MODEL,
        max_retries=0,
        timeout=60,
        **kwargs,
    )


def test_invoke_answers(daemon: RunningAgent, loopback_only: list[Any]) -> None:
    reply = _llm(daemon, max_completion_tokens=8).invoke("What is a module?")
    assert isinstance(reply, AIMessage)
    assert isinstance(reply.content, str) and reply.content
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0
    assert reply.response_metadata["model_name"] == LOCAL_MODEL
    assert loopback_only, "the request did reach the daemon"


def test_bind_tools_forced_call_then_answer(daemon: RunningAgent, loopback_only: list[Any]) -> None:
    llm = _llm(daemon, max_completion_tokens=60).bind_tools(
        [WEATHER_TOOL], tool_choice="get_weather"
    )
    ask = HumanMessage("What is the weather in Paris for the next two days?")
    reply = llm.invoke([ask])
    assert isinstance(reply, AIMessage)
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER_TOOL["function"]["parameters"])
    assert call["id"] is not None and len(call["id"]) == 9 and call["id"].isalnum()
    # LangChain sends the call and its result back as OpenAI messages; the box answers.
    result = ToolMessage('{"forecast": "sunny"}', tool_call_id=call["id"])
    answer = (
        _llm(daemon, max_completion_tokens=8)
        .bind_tools([WEATHER_TOOL])
        .invoke([ask, reply, result])
    )
    assert isinstance(answer, AIMessage)
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")
