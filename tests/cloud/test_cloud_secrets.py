"""The token never shows: not in logs (httpx/httpcore at DEBUG included), exception messages,
reprs, cause chains, tracebacks, snapshots or failover events."""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncGenerator
from contextlib import aclosing

import pytest
from cloud_helpers import FAKE_TOKEN, MakeClient, fast_config
from fake_router import Behaviour, FakeRouter, Hang, Reply, Status

from edge_agent.chat import Message
from edge_agent.cloud import (
    CloudAuthError,
    CloudChatRequest,
    ConnectivityMonitor,
    FailoverEvent,
    RouterClient,
    StreamChunk,
    failover_stream,
)
from edge_agent.errors import EdgeAgentError

pytestmark = pytest.mark.timeout(20)

REQUEST = CloudChatRequest(messages=(Message("user", "hi"),))


def _all_text(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


async def _drain(client: RouterClient) -> list[StreamChunk]:
    async with aclosing(client.stream_chat(REQUEST)) as stream:
        return [c async for c in stream]


async def test_token_never_appears_anywhere(
    router: FakeRouter, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []
    client = make_client(bill_to="acme")
    monitor = ConnectivityMonitor(client)
    outputs += [repr(client), repr(client.config), repr(await monitor.probe_now())]
    outputs.append(repr(await _drain(client)))
    # The router echoes the token back in its error text: it must be scrubbed.
    echo = {"error": {"message": f"token {FAKE_TOKEN} is not allowed"}}
    faults: list[Behaviour] = [
        Status(401, echo),
        Status(403, echo),
        Status(429, echo, {"Retry-After": "1"}),
        Status(500, echo),
        Reply(after=1, then="cut"),
        Reply(after=1, then="malformed"),
        Reply(after=1, then="error"),
        Reply(after=1, then="hang"),
        Hang(),
    ]
    for fault in faults:
        router.on_chat(fault)
        with pytest.raises(EdgeAgentError) as info:
            await _drain(client)
        outputs.append(_all_text(info.value))
    router.on_models(Status(401, echo))
    with pytest.raises(EdgeAgentError) as info:
        await client.list_models()
    outputs.append(_all_text(info.value))

    events: list[FailoverEvent] = []

    async def local(prefix: str) -> AsyncGenerator[StreamChunk, None]:
        yield StreamChunk("ok", source="local", finish_reason="stop")

    router.on_chat(Reply(after=2, then="cut"))
    async with aclosing(
        failover_stream(
            client.stream_chat(REQUEST),
            local,
            mode="continue_local",
            first_token_timeout_s=1,
            inter_chunk_timeout_s=1,
            on_failover=events.append,
        )
    ) as stream:
        outputs.append(repr([c async for c in stream]))
    outputs += [repr(events), repr(monitor.snapshot())]
    outputs += [record.getMessage() for record in caplog.records]
    outputs += [repr(record.args) for record in caplog.records]
    outputs.append(caplog.text)

    assert any("httpx" in r.name or "httpcore" in r.name for r in caplog.records)  # not vacuous
    blob = "\n".join(outputs)
    assert "[redacted]" in blob  # the echoed token was there to be scrubbed
    assert FAKE_TOKEN not in blob


async def test_malformed_token_is_refused_without_quoting_it(router: FakeRouter) -> None:
    bad = "hf_SECRET\r\nX-Injected: 1"
    client = RouterClient(fast_config(router.base_url), lambda: bad)
    with pytest.raises(CloudAuthError, match="malformed") as info:
        await _drain(client)
    assert "hf_SECRET" not in _all_text(info.value)
    assert router.requests == []
    await client.aclose()


async def test_failing_token_store_is_not_quoted(router: FakeRouter) -> None:
    def store() -> str:
        raise RuntimeError(f"could not unseal {FAKE_TOKEN}")

    client = RouterClient(fast_config(router.base_url), store)
    with pytest.raises(CloudAuthError, match="could not be read") as info:
        await client.probe()
    assert FAKE_TOKEN not in _all_text(info.value)
    assert not client.has_credential()
    await client.aclose()
