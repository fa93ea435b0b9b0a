"""Tools on the cloud leg: passed to the provider unchanged, streamed calls joined back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import aclosing

import pytest
from cloud_helpers import FAKE_TOKEN, fast_config
from fake_router import FakeRouter, Reply

from edge_agent.chat import Message
from edge_agent.cloud import CloudChatRequest, CloudProtocolError, RouterClient
from edge_agent.cloud._tools import ToolCallAssembler, parse_fragments
from edge_agent.engine import ToolCall, ToolSpec

pytestmark = pytest.mark.timeout(15)

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = ToolSpec("get_weather", "The weather forecast.", json.dumps(PARAMS))
EARLIER = ToolCall("abcDEF123", "get_weather", '{"city":"Oslo"}')


@pytest.fixture
def router() -> Iterator[FakeRouter]:
    server = FakeRouter(FAKE_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


async def test_tools_go_out_in_openai_shape_and_calls_come_back_whole(
    router: FakeRouter,
) -> None:
    router.on_chat(
        Reply(
            words=(),
            tool_calls=({"id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},),
        )
    )
    request = CloudChatRequest(
        messages=(
            Message("user", "Weather in Oslo, then Paris?"),
            Message("assistant", "", tool_calls=(EARLIER,)),
            Message("tool", "cloudy", tool_call_id=EARLIER.id),
        ),
        tools=(TOOL,),
        tool_choice="get_weather",
        parallel_tool_calls=False,
    )
    client = RouterClient(fast_config(router.base_url), lambda: FAKE_TOKEN)
    try:
        async with aclosing(client.stream_chat(request)) as stream:
            chunks = [chunk async for chunk in stream]
    finally:
        await client.aclose()
    final = chunks[-1]
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls == (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)
    sent = router.chat_requests()[-1].body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather forecast.",
                "parameters": PARAMS,
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "abcDEF123",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    assert sent["messages"][2] == {"role": "tool", "content": "cloudy", "tool_call_id": "abcDEF123"}


async def test_no_tools_means_no_tool_fields(router: FakeRouter) -> None:
    client = RouterClient(fast_config(router.base_url), lambda: FAKE_TOKEN)
    try:
        request = CloudChatRequest(messages=(Message("user", "hi"),))
        async with aclosing(client.stream_chat(request)) as stream:
            chunks = [chunk async for chunk in stream]
    finally:
        await client.aclose()
    assert chunks[-1].finish_reason == "stop" and chunks[-1].tool_calls == ()
    sent = router.chat_requests()[-1].body
    assert "tools" not in sent and "tool_choice" not in sent


def test_fragments_join_by_index_and_a_missing_id_is_supplied() -> None:
    calls = ToolCallAssembler()
    calls.add(parse_fragments([{"index": 1, "function": {"name": "b", "arguments": '{"x"'}}]))
    calls.add(
        parse_fragments(
            [
                {"index": 0, "id": "call_a", "function": {"name": "a"}},
                {"index": 1, "function": {"arguments": ":1}"}},
            ]
        )
    )
    a, b = calls.calls()
    assert (a.id, a.name, a.arguments) == ("call_a", "a", "{}")
    assert (b.name, b.arguments) == ("b", '{"x":1}')
    assert len(b.id) == 9 and b.id.isalnum()


@pytest.mark.parametrize(
    "raw",
    [
        {"index": 0},  # not a list
        [{"index": -1, "function": {"name": "a"}}],
        [{"index": 0, "function": {"name": 7}}],
        [{"index": 0, "function": "a"}],
    ],
)
def test_malformed_fragments_are_protocol_errors(raw: object) -> None:
    with pytest.raises(CloudProtocolError):
        parse_fragments(raw)


def test_a_call_without_a_name_is_a_protocol_error() -> None:
    calls = ToolCallAssembler()
    calls.add(parse_fragments([{"index": 0, "id": "x", "function": {"arguments": "{}"}}]))
    with pytest.raises(CloudProtocolError):
        calls.calls()
