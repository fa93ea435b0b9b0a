"""Incremental Server-Sent Events parsing and OpenAI chat-completion chunk decoding.

The parser follows the WHATWG event-stream rules that matter here: lines end in CRLF, LF or
CR; ``data:`` lines accumulate (joined with LF); a blank line dispatches; ``:`` lines are
comments (keep-alives); ``event:`` names the event. It is fed whatever byte slices the
network delivers, so an event split across reads (or a CRLF split in two) is handled. A line
longer than ``max_line_bytes`` is refused, so a peer that never sends a newline cannot make
us buffer without bound.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from edge_agent.chat import Usage
from edge_agent.cloud._errors import CloudProtocolError, error_in_stream
from edge_agent.cloud._tools import ToolCallFragment, parse_fragments

__all__ = ["DONE", "CompletionDelta", "SSEEvent", "SSEParser", "iter_sse", "parse_completion"]

DONE = "[DONE]"
_DEFAULT_MAX_LINE = 1 << 20


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"


class SSEParser:
    """Feed bytes, get complete events."""

    def __init__(self, *, max_line_bytes: int = _DEFAULT_MAX_LINE) -> None:
        self._buf = bytearray()
        self._max_line = max_line_bytes
        self._data: list[str] = []
        self._data_bytes = 0
        self._event = ""
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += chunk
        if not self._started and len(self._buf) >= 3:
            self._started = True
            if self._buf.startswith(b"\xef\xbb\xbf"):
                del self._buf[:3]
        events: list[SSEEvent] = []
        while True:
            line = self._next_line()
            if line is None:
                break
            event = self._line(line)
            if event is not None:
                events.append(event)
        if len(self._buf) > self._max_line:
            raise CloudProtocolError("the cloud event stream sent an over-long line")
        return events

    def _next_line(self) -> bytes | None:
        cr = self._buf.find(b"\r")
        lf = self._buf.find(b"\n")
        if cr == -1 and lf == -1:
            return None
        if cr != -1 and (lf == -1 or cr < lf):
            if cr == len(self._buf) - 1:
                return None  # may be the first half of CRLF; wait for the next byte
            end, skip = cr, 2 if self._buf[cr + 1 : cr + 2] == b"\n" else 1
        else:
            end, skip = lf, 1
        line = bytes(self._buf[:end])
        del self._buf[: end + skip]
        return line

    def _line(self, raw: bytes) -> SSEEvent | None:
        if len(raw) > self._max_line:
            raise CloudProtocolError("the cloud event stream sent an over-long line")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CloudProtocolError("the cloud event stream is not valid UTF-8") from exc
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._data_bytes += len(raw)
            if self._data_bytes > self._max_line:
                raise CloudProtocolError("the cloud event stream sent an over-long event")
        elif name == "event":
            self._event = value
        return None  # id, retry and unknown fields do not matter here

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(data="\n".join(self._data), event=self._event or "message")
        self._data = []
        self._data_bytes = 0
        self._event = ""
        return event


async def iter_sse(
    chunks: AsyncIterator[bytes], *, max_line_bytes: int = _DEFAULT_MAX_LINE
) -> AsyncGenerator[SSEEvent, None]:
    """Events from a byte stream. An event not terminated by a blank line at EOF is dropped."""
    parser = SSEParser(max_line_bytes=max_line_bytes)
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event


@dataclass(frozen=True, slots=True)
class CompletionDelta:
    """What one ``chat.completion.chunk`` said."""

    content: str
    finish_reason: str | None
    usage: Usage | None
    model: str | None
    tool_calls: tuple[ToolCallFragment, ...] = ()


def _usage(raw: object) -> Usage | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise CloudProtocolError("the cloud usage report has an unexpected shape")
    return Usage(
        prompt_tokens=_count(raw.get("prompt_tokens")),
        completion_tokens=_count(raw.get("completion_tokens", 0)),
    )


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CloudProtocolError("the cloud usage report has invalid token counts")
    return value


def parse_completion(event: SSEEvent, secrets: tuple[str, ...] = ()) -> CompletionDelta:
    """Decode one data event of a streamed chat completion (not ``[DONE]``).

    Raises the mapped error (``error_in_stream``) for an in-stream ``error`` object and
    CloudProtocolError for anything that is not a chat-completion chunk. (``dict`` checks,
    not ``Mapping``: the input is always ``json.loads`` output and this runs once per token.)
    """
    try:
        payload = json.loads(event.data)
    except ValueError as exc:
        raise CloudProtocolError("the cloud event stream carried malformed JSON") from exc
    if not isinstance(payload, dict):
        raise CloudProtocolError("the cloud event stream carried a non-object event")
    if "error" in payload or event.event == "error":
        raise error_in_stream(payload, secrets)
    choices = payload.get("choices", [])
    if not isinstance(choices, list):
        raise CloudProtocolError("the cloud chunk has no choices list")
    content = ""
    finish: str | None = None
    fragments: tuple[ToolCallFragment, ...] = ()
    for choice in choices:
        if not isinstance(choice, dict):
            raise CloudProtocolError("the cloud chunk has a malformed choice")
        if choice.get("index", 0) != 0:
            continue  # we always ask for n=1
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise CloudProtocolError("the cloud chunk has a malformed delta")
        text = delta.get("content")
        if text is not None and not isinstance(text, str):
            raise CloudProtocolError("the cloud chunk has non-text content")
        content += text or ""
        fragments += parse_fragments(delta.get("tool_calls"))
        reason = choice.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            raise CloudProtocolError("the cloud chunk has a malformed finish_reason")
        finish = reason or finish
    model = payload.get("model")
    return CompletionDelta(
        content=content,
        finish_reason=finish,
        usage=_usage(payload.get("usage")),
        model=model if isinstance(model, str) and model else None,
        tool_calls=fragments,
    )
