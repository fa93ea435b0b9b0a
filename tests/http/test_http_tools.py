"""Tool calling through both APIs on the real demo model: forced calls, round trips."""

from __future__ import annotations

import json
import re
from typing import Any

import grpc
import jsonschema
import openai
import pytest
from daemon_harness import RunningAgent
from http_harness import LOCAL_MODEL, WEATHER_TOOL
from openai import OpenAI

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc

# Any: the SDK's TypedDict parameters; these are plain JSON as a client would write them.
WEATHER_SCHEMA = WEATHER_TOOL["function"]["parameters"]
FORCED: Any = {"type": "function", "function": {"name": "get_weather"}}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris for the next two days?"}]
TOOLS: Any = [WEATHER_TOOL]


def _check_call(call_id: str, name: str, arguments: str) -> dict[str, object]:
    assert re.fullmatch(r"[A-Za-z0-9]{9}", call_id), call_id
    assert name == "get_weather"
    args = json.loads(arguments)
    jsonschema.validate(args, WEATHER_SCHEMA)
    return args  # type: ignore[no-any-return]


def test_forced_call_validates_against_the_schema(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice=FORCED,
        max_tokens=60,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    _check_call(call.id, call.function.name, call.function.arguments)


def test_required_call_streams_as_tool_call_deltas(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=60,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "", "a call is not text"
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].index == 0
    function = calls[0].function
    assert function is not None
    _check_call(calls[0].id or "", function.name or "", function.arguments or "")
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_two_turn_tool_conversation(client: OpenAI) -> None:
    first = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice=FORCED,
        max_tokens=60,
    )
    message = first.choices[0].message
    call = (message.tool_calls or [])[0]
    history: Any = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny, 21 C"}'},
    ]
    second = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=history,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=24,
    )
    answer = second.choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.tool_calls is None
    assert answer.message.content
    # The tool result and the call are part of the prompt: it is longer than the question.
    assert second.usage is not None and first.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
                ]
            },
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "tools[1].function.name"),
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice.function.name",
        ),
        (
            {
                "tools": [WEATHER_TOOL],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "tool_choice",
        ),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "abcdefghi", "content": "x"}]},
            "messages[1].tool_call_id",
        ),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "abcdefghi",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": "[1]"},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "abcdefghi", "content": "x"},
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
)
def test_bad_tool_fields_are_400(client: OpenAI, fields: dict[str, object], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=ASK,
            max_tokens=4,
            extra_body=fields,
        )
    assert info.value.body["param"] == param  # type: ignore[index]


def test_grpc_forced_call_and_answer(daemon: RunningAgent) -> None:
    tool = pb.Tool(
        name="get_weather",
        description="The weather forecast for a city.",
        parameters_json=json.dumps(WEATHER_SCHEMA),
    )
    request = pb.ChatRequest(
        messages=[pb.ChatMessage(role="user", content=ASK[0]["content"])],
        tools=[tool],
        tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_FUNCTION, function_name="get_weather"),
        max_tokens=60,
    )
    with grpc.insecure_channel(daemon.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        final = list(stub.Chat(request, timeout=60))[-1]
        assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
        assert len(final.tool_calls) == 1
        call = final.tool_calls[0]
        _check_call(call.id, call.name, call.arguments)
        # The second turn: the call and its result go back as messages.
        follow = pb.ChatRequest(
            messages=[
                request.messages[0],
                pb.ChatMessage(role="assistant", tool_calls=[call]),
                pb.ChatMessage(role="tool", tool_call_id=call.id, content="sunny, 21 C"),
            ],
            tools=[tool],
            max_tokens=16,
        )
        answer = list(stub.Chat(follow, timeout=60))
        assert answer[-1].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
        bad = pb.ChatRequest(
            messages=[request.messages[0]],
            tools=[tool],
            tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_FUNCTION, function_name="other"),
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Chat(bad, timeout=60))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith("tool_choice.function_name")
        not_json = pb.ChatRequest(
            messages=[
                request.messages[0],
                pb.ChatMessage(
                    role="assistant",
                    tool_calls=[pb.ToolCall(id=call.id, name=call.name, arguments="[" * 100_000)],
                ),
                pb.ChatMessage(role="tool", tool_call_id=call.id, content="x"),
            ]
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Chat(not_json, timeout=60))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith("messages[1].tool_calls[0].arguments")
