"""Failover: every cloud fault ends in a local answer or a clear error, never a hang.

The cloud side is the real client talking to the stand-in router; the local side is a
small generator standing in for the engine adapter (the lead's), which records the text it
was asked to continue from.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import pytest
from cloud_helpers import MakeClient
from fake_router import DEFAULT_WORDS, Behaviour, FakeRouter, Hang, Reply, Status

from edge_agent.chat import Message, Usage
from edge_agent.cloud import (
    BreakerState,
    CloudChatRequest,
    CloudServerError,
    CloudStreamInterrupted,
    ConnectivityMonitor,
    FailoverEvent,
    RouterClient,
    StreamChunk,
    failover_stream,
)
from edge_agent.cloud._config import FailoverMode

pytestmark = pytest.mark.timeout(15)

REQUEST = CloudChatRequest(messages=(Message("user", "hi"),))
LOCAL_FRESH = ("Local", " answer")
LOCAL_CONTINUED = (" and", " locally")


class LocalEngine:
    def __init__(self) -> None:
        self.prefixes: list[str] = []
        self.closed = False

    def __call__(self, prefix: str) -> AsyncIterator[StreamChunk]:
        self.prefixes.append(prefix)
        return self._run(prefix)

    async def _run(self, prefix: str) -> AsyncGenerator[StreamChunk, None]:
        try:
            for word in LOCAL_CONTINUED if prefix else LOCAL_FRESH:
                await asyncio.sleep(0)
                yield StreamChunk(word, source="local")
            yield StreamChunk(
                "",
                source="local",
                finish_reason="stop",
                usage=Usage(9, 2),
                model="mistral-small-3@1.0.0",
                provider="cpu",
            )
        finally:
            self.closed = True


async def run(
    client: RouterClient,
    mode: FailoverMode = "continue_local",
    *,
    first_token_timeout_s: float = 0.4,
    inter_chunk_timeout_s: float = 0.3,
) -> tuple[list[StreamChunk], LocalEngine, list[FailoverEvent]]:
    local = LocalEngine()
    events: list[FailoverEvent] = []
    chunks: list[StreamChunk] = []
    stream = failover_stream(
        client.stream_chat(REQUEST),
        local,
        mode=mode,
        first_token_timeout_s=first_token_timeout_s,
        inter_chunk_timeout_s=inter_chunk_timeout_s,
        on_failover=events.append,
    )
    async with asyncio.timeout(5):  # the property under test: it never hangs
        async with aclosing(stream):
            async for chunk in stream:
                chunks.append(chunk)
    return chunks, local, events


def text(chunks: list[StreamChunk]) -> str:
    return "".join(c.delta for c in chunks)


async def test_healthy_cloud_is_passed_through(router: FakeRouter, make_client: MakeClient) -> None:
    chunks, local, events = await run(make_client())
    assert text(chunks) == "".join(DEFAULT_WORDS)
    assert {c.source for c in chunks} == {"cloud"}
    assert chunks[-1].finish_reason == "stop"
    assert local.prefixes == []
    assert events == []


BEFORE_FIRST_TOKEN: list[Behaviour] = [
    Status(500),
    Status(503),
    Status(429, headers={"Retry-After": "30"}),
    Status(429),
    Status(402),
    Status(401),
    Status(404),
    Hang(),
    Reply(first_byte_delay_s=3.0),
    Reply(after=0, then="hang"),
    Reply(after=0, then="drip", drip_interval_s=0.02),
    Reply(after=0, then="cut"),
    Reply(after=0, then="malformed"),
    Reply(after=0, then="error"),
    Reply(after=0, then="eof"),
    Reply(content_type="application/json"),
]


@pytest.mark.parametrize("fault", BEFORE_FIRST_TOKEN, ids=repr)
async def test_fault_before_first_token_falls_back_transparently(
    router: FakeRouter, make_client: MakeClient, fault: Behaviour
) -> None:
    router.on_chat(fault)
    # Mode "fail" only concerns cuts after the first token: before it, fallback is silent.
    chunks, local, events = await run(make_client(), "fail")
    assert text(chunks) == "".join(LOCAL_FRESH)
    assert {c.source for c in chunks} == {"local"}
    assert chunks[-1].finish_reason == "stop"
    assert local.prefixes == [""]
    assert local.closed
    (event,) = events
    assert (event.stage, event.action, event.cloud_chars) == ("before_first_token", "local", 0)


async def test_connection_refused_falls_back(make_client: MakeClient, closed_port: int) -> None:
    client = make_client(base_url=f"http://127.0.0.1:{closed_port}/v1")
    chunks, _, events = await run(client)
    assert text(chunks) == "".join(LOCAL_FRESH)
    assert events[0].kind == "connect"


MID_STREAM: list[Behaviour] = [
    Reply(after=2, then="cut"),
    Reply(after=2, then="malformed"),
    Reply(after=2, then="error"),
    Reply(after=2, then="eof"),
    Reply(after=2, then="hang"),
    Reply(after=2, then="drip", drip_interval_s=0.02),
]


@pytest.mark.parametrize("fault", MID_STREAM, ids=repr)
async def test_cut_mid_stream_continues_locally(
    router: FakeRouter, make_client: MakeClient, fault: Behaviour
) -> None:
    router.on_chat(fault)
    chunks, local, events = await run(make_client(), "continue_local")
    cloud_part = "".join(DEFAULT_WORDS[:2])
    assert local.prefixes == [cloud_part]
    assert text(chunks) == cloud_part + "".join(LOCAL_CONTINUED)
    assert [c.source for c in chunks] == ["cloud", "cloud", "local", "local", "local"]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].provider == "cpu"  # provenance of the part that finished
    (event,) = events
    assert (event.stage, event.action) == ("mid_stream", "local")
    assert (event.cloud_chunks, event.cloud_chars) == (2, len(cloud_part))


@pytest.mark.parametrize("fault", MID_STREAM, ids=repr)
async def test_cut_mid_stream_fails_clearly_in_fail_mode(
    router: FakeRouter, make_client: MakeClient, fault: Behaviour
) -> None:
    router.on_chat(fault)
    received: list[StreamChunk] = []
    events: list[FailoverEvent] = []
    local = LocalEngine()
    stream = failover_stream(
        make_client().stream_chat(REQUEST),
        local,
        mode="fail",
        first_token_timeout_s=0.4,
        inter_chunk_timeout_s=0.3,
        on_failover=events.append,
    )

    async def consume() -> None:
        async with asyncio.timeout(5), aclosing(stream):
            async for chunk in stream:
                received.append(chunk)

    with pytest.raises(CloudStreamInterrupted, match="incomplete") as info:
        await consume()
    assert text(received) == "".join(DEFAULT_WORDS[:2])
    assert local.prefixes == []
    assert info.value.code.name == "UNAVAILABLE"
    assert events[0].action == "fail"


async def test_own_deadlines_feed_the_monitor(router: FakeRouter, make_client: MakeClient) -> None:
    # The cancelled cloud stream cannot report its own timeout: failover does it.
    router.on_chat(Hang(), Hang())
    client = make_client(total_timeout_s=30.0, read_timeout_s=30.0)
    monitor = ConnectivityMonitor(client)
    for _ in range(2):
        stream = failover_stream(
            client.stream_chat(REQUEST),
            LocalEngine(),
            mode="continue_local",
            first_token_timeout_s=0.2,
            inter_chunk_timeout_s=0.2,
            observer=monitor,
        )
        async with asyncio.timeout(5), aclosing(stream):
            assert text([c async for c in stream]) == "".join(LOCAL_FRESH)
    snap = monitor.snapshot()
    assert snap.requests_failed == 2
    assert snap.last_failure_kind == "timeout"
    assert snap.breaker is BreakerState.OPEN  # threshold 2 in the test config


async def test_consumer_abandoning_the_stream_closes_both_sides(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(after=2, then="hang"))
    client = make_client()
    local = LocalEngine()
    stream = failover_stream(
        client.stream_chat(REQUEST),
        local,
        mode="continue_local",
        first_token_timeout_s=0.6,
        inter_chunk_timeout_s=30.0,
    )
    async with asyncio.timeout(5), aclosing(stream):
        async for _ in stream:
            break
    assert local.prefixes == []
    # The hung cloud response was released: the client can be used at once.
    async with asyncio.timeout(5), aclosing(client.stream_chat(REQUEST)) as again:
        assert [c async for c in again][-1].finish_reason == "stop"


async def test_plain_iterators_and_non_router_errors() -> None:
    async def cloud_ends_without_finish() -> AsyncGenerator[StreamChunk, None]:
        yield StreamChunk("partial", source="cloud")

    local = LocalEngine()
    chunks: list[StreamChunk] = []
    async with aclosing(
        failover_stream(
            cloud_ends_without_finish(),
            local,
            mode="continue_local",
            first_token_timeout_s=1,
            inter_chunk_timeout_s=1,
        )
    ) as stream:
        chunks = [c async for c in stream]
    assert local.prefixes == ["partial"]
    assert text(chunks) == "partial" + "".join(LOCAL_CONTINUED)

    async def cloud_bug() -> AsyncGenerator[StreamChunk, None]:
        raise KeyError("a bug, not a cloud failure")
        yield StreamChunk("", source="cloud")  # pragma: no cover

    with pytest.raises(KeyError):
        async with aclosing(
            failover_stream(
                cloud_bug(),
                LocalEngine(),
                mode="continue_local",
                first_token_timeout_s=1,
                inter_chunk_timeout_s=1,
            )
        ) as stream:
            [c async for c in stream]

    async def cloud_server_error() -> AsyncGenerator[StreamChunk, None]:
        raise CloudServerError("boom", status=500)
        yield StreamChunk("", source="cloud")  # pragma: no cover

    events: list[FailoverEvent] = []
    async with aclosing(
        failover_stream(
            cloud_server_error(),
            LocalEngine(),
            mode="fail",
            first_token_timeout_s=1,
            inter_chunk_timeout_s=1,
            on_failover=events.append,
        )
    ) as stream:
        assert text([c async for c in stream]) == "".join(LOCAL_FRESH)
    assert events[0].kind == "server"
