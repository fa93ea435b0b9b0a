"""The incremental SSE parser and chat-chunk decoding."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cloud import CloudProtocolError, CloudStreamError
from edge_agent.cloud._sse import SSEEvent, SSEParser, parse_completion

STREAM = (
    b"\xef\xbb\xbf: keep-alive\n\n"
    b"event: message\r\ndata: first\r\n\r\n"
    b"data: multi\ndata: line\n\n"
    b"data:nospace\rid: 3\rretry: 10\r\r"
    b"data: \xc3\xa9t\xc3\xa9\n\n"
    b"data: [DONE]\n\n"
    b"data: unterminated"
)
EXPECTED = [
    SSEEvent("first"),
    SSEEvent("multi\nline"),
    SSEEvent("nospace"),
    SSEEvent("été"),
    SSEEvent("[DONE]"),
]


def _feed_all(parts: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for part in parts:
        events.extend(parser.feed(part))
    return events


def test_whole_stream() -> None:
    assert _feed_all([STREAM]) == EXPECTED


def test_one_byte_at_a_time() -> None:
    assert _feed_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    parts = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert _feed_all(parts) == EXPECTED


def test_named_event() -> None:
    assert _feed_all([b"event: error\ndata: {}\n\n"]) == [SSEEvent("{}", event="error")]


def test_over_long_line_is_refused_even_without_newline() -> None:
    parser = SSEParser(max_line_bytes=64)
    for _ in range(2):
        parser.feed(b"data: " + b"x" * 20)  # 52 bytes buffered, no newline yet: fine
    with pytest.raises(CloudProtocolError, match="over-long"):
        parser.feed(b"data: " + b"x" * 20)


def test_over_long_event_is_refused() -> None:
    parser = SSEParser(max_line_bytes=64)
    with pytest.raises(CloudProtocolError, match="over-long"):
        parser.feed(b"data: " + b"x" * 40 + b"\n" + b"data: " + b"y" * 40 + b"\n")


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(CloudProtocolError, match="UTF-8"):
        SSEParser().feed(b"data: \xff\n\n")


def _chunk(**fields: object) -> SSEEvent:
    return SSEEvent(json.dumps(fields))


def test_parse_completion_fields() -> None:
    delta = parse_completion(
        _chunk(
            model="m/x",
            choices=[{"index": 0, "delta": {"content": "hi"}, "finish_reason": "length"}],
            usage={"prompt_tokens": 3, "completion_tokens": 2},
        )
    )
    assert (delta.content, delta.finish_reason, delta.model) == ("hi", "length", "m/x")
    assert delta.usage is not None
    assert delta.usage.total_tokens == 5
    assert parse_completion(_chunk(choices=[])).content == ""
    # Other choices (n > 1) and role-only deltas carry no text for us.
    other = parse_completion(_chunk(choices=[{"index": 1, "delta": {"content": "no"}}]))
    assert other.content == ""


@pytest.mark.parametrize(
    "data",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"choices": {"0": 1}}),
        json.dumps({"choices": ["x"]}),
        json.dumps({"choices": [{"delta": "x"}]}),
        json.dumps({"choices": [{"delta": {"content": 5}}]}),
        json.dumps({"choices": [{"delta": {}, "finish_reason": 1}]}),
        json.dumps({"choices": [], "usage": {"prompt_tokens": -1}}),
        json.dumps({"choices": [], "usage": {"prompt_tokens": True}}),
        json.dumps({"choices": [], "usage": "lots"}),
    ],
)
def test_malformed_chunks_are_protocol_errors(data: str) -> None:
    with pytest.raises(CloudProtocolError):
        parse_completion(SSEEvent(data))


def test_in_stream_error_object() -> None:
    with pytest.raises(CloudStreamError, match="model overloaded"):
        parse_completion(_chunk(error={"message": "model overloaded", "type": "server_error"}))
    with pytest.raises(CloudStreamError):
        parse_completion(SSEEvent("{}", event="error"))
