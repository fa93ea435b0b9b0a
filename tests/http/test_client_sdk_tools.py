"""Tools through the project's own gRPC client SDK and `edge-agent chat`, on the real daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import jsonschema
import pytest
from daemon_harness import RunningAgent
from http_harness import WEATHER_TOOL

from edge_agent.cli import main
from edge_agent.client import (
    AsyncClient,
    ChatOptions,
    Client,
    Message,
    MessageLike,
    ToolSpec,
    tools_from_openai,
)

SCHEMA = WEATHER_TOOL["function"]["parameters"]
ASK = ("user", "What is the weather in Paris for the next two days?")
TOOLS = tools_from_openai([WEATHER_TOOL])
OTHER = ToolSpec("get_time", "The local time of a city.", '{"type":"object","properties":{}}')


def _valid(name: str, call_id: str, arguments: str) -> dict[str, object]:
    assert name == "get_weather"
    assert re.fullmatch(r"[A-Za-z0-9]{9}", call_id), call_id
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMA)
    return args  # type: ignore[no-any-return]


def test_tools_from_openai_keeps_the_schema() -> None:
    (spec,) = TOOLS
    assert spec.name == "get_weather"
    assert spec.description == WEATHER_TOOL["function"]["description"]
    assert json.loads(spec.parameters_json) == SCHEMA
    assert tools_from_openai([WEATHER_TOOL["function"]]) == TOOLS  # a bare function object
    for bad in ([{"type": "function"}], [1], [{"function": "get_weather"}]):
        with pytest.raises(ValueError, match=r"tools\[0\]"):
            tools_from_openai(bad)  # type: ignore[arg-type]


async def test_async_client_forced_call_validates(daemon: RunningAgent) -> None:
    options = ChatOptions(max_tokens=60, tools=(OTHER, *TOOLS), tool_choice="get_weather")
    async with AsyncClient(daemon.target) as client:
        chunks = [c async for c in client.chat([ASK], options, timeout=60)]
    final = chunks[-1]
    assert final.finish_reason == "tool_calls"
    assert "".join(c.delta for c in chunks) == ""
    calls = [call for c in chunks for call in c.tool_calls]
    assert len(calls) == 1
    _valid(calls[0].name, calls[0].id, calls[0].arguments)


def test_client_tool_round_trip(daemon: RunningAgent) -> None:
    options = ChatOptions(max_tokens=60, tools=TOOLS, tool_choice="required")
    with Client(daemon.target) as client:
        first = list(client.chat([ASK], options, timeout=60))
        assert first[-1].finish_reason == "tool_calls"
        calls = tuple(call for c in first for call in c.tool_calls)
        _valid(calls[0].name, calls[0].id, calls[0].arguments)
        conversation: list[MessageLike] = [
            ASK,
            Message("assistant", "", tool_calls=calls),
            Message("tool", '{"forecast": "sunny", "high_c": 21}', tool_call_id=calls[0].id),
        ]
        answer = list(
            client.chat(conversation, ChatOptions(max_tokens=12, tools=TOOLS), timeout=60)
        )
        assert answer[-1].finish_reason in ("stop", "length", "tool_calls")
        usage = answer[-1].usage
        assert usage is not None and usage.completion_tokens > 0
        # The server read the tool turn: a result answering no call is refused by field.
        stray: list[MessageLike] = [ASK, Message("tool", "{}", tool_call_id="abcdefghi")]
        with pytest.raises(grpc.RpcError) as info:
            list(client.chat(stray, ChatOptions(tools=TOOLS), timeout=60))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith("messages[1].tool_call_id")


def test_cli_prints_forced_calls_as_json(
    daemon: RunningAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER_TOOL]))
    argv = ["chat", ASK[1], "--target", daemon.target, "--max-tokens", "60", "--tools", str(tools)]
    assert main([*argv, "--tool-choice", "get_weather"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    (call,) = json.loads(out[0])
    assert set(call) == {"id", "name", "arguments"}
    _valid(call["name"], call["id"], json.dumps(call["arguments"]))

    # "none": an ordinary text answer, no JSON line.
    assert main([*argv, "--tool-choice", "none", "--max-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert text.endswith("\n")
    assert not text.lstrip().startswith("[{")


def test_cli_tool_arguments_are_checked(
    daemon: RunningAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", daemon.target]
    assert main(["chat", "hi", *target, "--tool-choice", "required"]) == 2
    assert "--tool-choice: needs --tools" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    assert main(["chat", "hi", *target, "--tools", str(broken)]) == 2
    assert "--tools:" in capsys.readouterr().err
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(WEATHER_TOOL))  # one tool object is accepted too
    # A choice naming no offered tool is the server's INVALID_ARGUMENT, by field.
    assert main(["chat", "hi", *target, "--tools", str(tools), "--tool-choice", "nope"]) == 1
    assert "INVALID_ARGUMENT: tool_choice.function_name" in capsys.readouterr().err
