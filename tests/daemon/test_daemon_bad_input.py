"""Every malformed request is INVALID_ARGUMENT naming the field; the daemon keeps serving."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc


def _user(text: str = "hello") -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role="user", content=text)]


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("empty messages", {"messages": []}, "messages"),
    ("unknown role", {"messages": [pb.ChatMessage(role="wizard", content="x")]}, "messages[0].role"),
    ("only blank user text", {"messages": _user("   ")}, "messages"),
    ("last message not user", {"messages": [*_user(), pb.ChatMessage(role="assistant", content="a")]}, "messages"),
    ("zero max_tokens", {"messages": _user(), "max_tokens": 0}, "max_tokens"),
    ("negative max_tokens", {"messages": _user(), "max_tokens": -5}, "max_tokens"),
    ("max_tokens beyond context", {"messages": _user(), "max_tokens": 10_000_000}, "max_tokens"),
    ("min_tokens above max_tokens", {"messages": _user(), "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    ("negative min_tokens", {"messages": _user(), "min_tokens": -1}, "min_tokens"),
    ("temperature too high", {"messages": _user(), "temperature": 2.5}, "temperature"),
    ("temperature negative", {"messages": _user(), "temperature": -0.1}, "temperature"),
    ("temperature NaN", {"messages": _user(), "temperature": float("nan")}, "temperature"),
    ("top_p zero", {"messages": _user(), "top_p": 0.0}, "top_p"),
    ("top_p above one", {"messages": _user(), "top_p": 1.5}, "top_p"),
    ("top_k negative", {"messages": _user(), "top_k": -1}, "top_k"),
    ("seed negative", {"messages": _user(), "seed": -3}, "seed"),
    ("too many stop strings", {"messages": _user(), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("empty stop string", {"messages": _user(), "stop": [""]}, "stop[0]"),
    ("priority out of range", {"messages": _user(), "priority": 99}, "priority"),
    ("unknown data class", {"messages": _user(), "data_class": 42}, "data_class"),
    ("schema not JSON", {"messages": _user(), "response_format": pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema="{nope")}, "response_format.json_schema"),
    ("schema not an object", {"messages": _user(), "response_format": pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema="[1, 2]")}, "response_format.json_schema"),
    ("schema unknown type", {"messages": _user(), "response_format": pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema='{"type": "banana"}')}, "response_format.json_schema"),
    ("oversized message", {"messages": _user("x" * 70_000)}, "messages[0].content"),
    ("prompt beyond the context", {"messages": _user("word " * 6000)}, "messages"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_invalid_argument_naming_the_field(
    channel: grpc.Channel, fields: dict[str, Any], field: str
) -> None:
    stub = pb_grpc.InferenceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Chat(pb.ChatRequest(**fields), timeout=30))
    err = info.value
    details = err.details() or ""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"{field}:"), details
    assert "Traceback" not in details


def test_message_beyond_the_transport_limit_is_refused(channel: grpc.Channel) -> None:
    stub = pb_grpc.InferenceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Chat(pb.ChatRequest(messages=_user("y" * (5 * 1024 * 1024))), timeout=30))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bad_requests_do_not_disturb_a_stream_in_flight(channel: grpc.Channel) -> None:
    stub = pb_grpc.InferenceStub(channel)
    result: list[pb.ChatResponse] = []

    def long_stream() -> None:
        request = pb.ChatRequest(
            messages=_user("Write a long story."), max_tokens=60, min_tokens=60
        )
        result.extend(stub.Chat(request, timeout=60))

    worker = threading.Thread(target=long_stream)
    worker.start()
    for _, fields, _ in CASES:
        with pytest.raises(grpc.RpcError):
            list(stub.Chat(pb.ChatRequest(**fields), timeout=30))
    worker.join(60)
    assert result and result[-1].usage.completion_tokens == 60
