"""The chat path in-process: routing, both legs, failover, budget and audit.

The daemon's own parts throughout (``ChatService``, ``LocalChat`` with admission, the signed
policy, the SQLite ledger, the audit chain, the router client and its failover), with a
scripted engine and an ``httpx.MockTransport`` router at the edges (tests/core/
chat_path_parts.py). The daemon, HTTP and e2e suites check the same behaviour through the
real worker and a real router stand-in; these pin down each branch of the path on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path

import httpx
import pytest
from chat_path_parts import (
    CLOUD_MODEL,
    ChatPath,
    Handler,
    ScriptedStream,
    chat_path,
    completion,
    sse,
)

from edge_agent.chat import (
    CallContext,
    ChatChunk,
    ChatSpec,
    DataClass,
    Message,
    RoutePreference,
    ToolCall,
    ToolSpec,
    Usage,
)
from edge_agent.cloud import CloudStreamInterrupted
from edge_agent.errors import InvalidArgument

HELLO = (Message("user", "Tell me about tides."),)
# Public data asking for the large model: the policy sends it to the cloud.
TO_CLOUD = ChatSpec(
    messages=HELLO,
    max_tokens=40,
    data_class=DataClass.PUBLIC,
    route=RoutePreference.LARGE_MODEL,
)
CLOUD_USAGE = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}


def text(chunks: list[ChatChunk]) -> str:
    return "".join(c.delta for c in chunks)


def answering(stream: ScriptedStream) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        return sse(stream)

    return handler


def attempts(path: ChatPath) -> list[dict[str, object]]:
    (record,) = path.audit.records()
    return record.attempt_list()


async def test_a_plain_chat_is_answered_locally_and_audited(tmp_path: Path) -> None:
    async with chat_path(tmp_path) as path:
        chunks = await path.run(ChatSpec(messages=HELLO, max_tokens=8))

        assert text(chunks) == "local answer"
        final = chunks[-1]
        assert final.finish_reason == "stop"
        assert final.usage == Usage(len(HELLO[0].content), 2)
        assert final.provenance is not None
        assert (final.provenance.destination, final.provenance.model) == ("local", "scripted")
        assert final.provenance.decision_reason == "local.default"
        assert path.engine.requests[0].max_tokens == 8
        assert path.cloud.chats == [], "nothing went to the router"
        (record,) = path.audit.records()
        assert (record.destination, record.reason, record.left_box) == ("local", "local.default", 0)
        assert [a["outcome"] for a in record.attempt_list()] == ["ok"]
        assert path.admission.stats.active == 0, "the admission slot was given back"


async def test_escalation_the_policy_allows_runs_in_the_cloud_and_settles_its_usage(
    tmp_path: Path,
) -> None:
    stream = ScriptedStream(
        [
            completion("Hel"),
            completion("lo"),
            completion(finish="stop", usage=CLOUD_USAGE),
            "[DONE]",
        ]
    )
    async with chat_path(tmp_path) as path:
        path.cloud.chat = answering(stream)
        chunks = await path.run(TO_CLOUD)

        assert text(chunks) == "Hello"
        final = chunks[-1]
        assert final.provenance is not None
        assert final.provenance.destination == "cloud"
        assert (final.provenance.model, final.provenance.cloud_provider) == (
            CLOUD_MODEL,
            "together",
        )
        assert final.provenance.decision_reason == "cloud.large_model_requested"
        assert final.usage == Usage(11, 2), "the provider's own count"
        assert path.engine.requests == [], "the local engine never ran"
        (sent,) = path.cloud.chats
        body = json.loads(sent.content)
        assert body["model"] == f"{CLOUD_MODEL}:together"
        assert body["messages"] == [{"role": "user", "content": HELLO[0].content}]
        assert body["max_tokens"] == 40
        # Reserved at the worst case, then settled at what the provider reported.
        assert path.reserved() == 0
        assert path.spent_tokens() == 13
        (record,) = path.audit.records()
        assert (record.destination, record.left_box) == ("cloud", 1)
        assert (record.tokens_in, record.tokens_out) == (11, 2)
        # The router's live price (0.3 and 0.6 USD per million tokens), not the fleet's.
        assert record.cost_usd == pytest.approx((11 * 0.3 + 2 * 0.6) / 1e6)
        assert stream.closed


async def test_escalation_the_policy_refuses_stays_local_and_touches_no_budget(
    tmp_path: Path,
) -> None:
    restricted = ChatSpec(
        messages=HELLO, data_class=DataClass.RESTRICTED, route=RoutePreference.LARGE_MODEL
    )
    async with chat_path(tmp_path) as path:
        chunks = await path.run(restricted)

        assert text(chunks) == "local answer"
        final = chunks[-1]
        assert final.provenance is not None
        assert final.provenance.destination == "local"
        assert (
            final.provenance.decision_reason
            == "local.large_model_requested_but_data_class_local_only"
        )
        assert path.cloud.chats == []
        assert (path.reserved(), path.spent_tokens()) == (0, 0)
        (record,) = path.audit.records()
        assert (record.destination, record.data_class, record.left_box) == (
            "local",
            "restricted",
            0,
        )


@pytest.mark.parametrize(
    ("fault", "left_box"),
    [("refused_503", 1), ("connect_error", 0)],
)
async def test_a_cloud_failure_before_the_first_token_is_answered_locally_from_scratch(
    tmp_path: Path, fault: str, left_box: int
) -> None:
    async def failing(request: httpx.Request) -> httpx.Response:
        if fault == "connect_error":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(503, json={"error": "overloaded"})

    async with chat_path(tmp_path) as path:
        path.cloud.chat = failing
        chunks = await path.run(TO_CLOUD)

        assert text(chunks) == "local answer", "the client sees only the local answer"
        (request,) = path.engine.requests
        assert request.assistant_prefix == ""
        final = chunks[-1]
        assert final.provenance is not None
        assert final.provenance.destination == "local"
        assert final.provenance.decision_reason == "local.cloud_failed_before_first_token"
        # Nothing a provider could bill: the reservation is released, not settled.
        assert (path.reserved(), path.spent_tokens()) == (0, 0)
        (record,) = path.audit.records()
        assert record.left_box == left_box, "a refused request still reached the router"
        assert record.fallback_reason == "local.cloud_failed_before_first_token"
        cloud, local = record.attempt_list()
        assert (cloud["destination"], cloud["usage"]) == ("cloud", "none")
        assert cloud["outcome"] != "ok"
        assert (local["destination"], local["outcome"]) == ("local", "ok")


async def test_a_cloud_cut_after_the_first_token_continues_locally_after_the_text_sent(
    tmp_path: Path,
) -> None:
    stream = ScriptedStream([completion("The tide")], then="cut")
    async with chat_path(tmp_path) as path:
        path.cloud.chat = answering(stream)
        chunks = await path.run(TO_CLOUD)

        assert text(chunks) == "The tidelocal answer"
        (request,) = path.engine.requests
        assert request.assistant_prefix == "The tide", "the engine continues the cloud's text"
        final = chunks[-1]
        assert final.provenance is not None
        assert final.provenance.destination == "local"
        assert final.provenance.decision_reason == "local.cloud_failover"
        assert stream.closed, "the cloud connection was released"
        # Accepted, and no usage report: the provider may bill up to the worst case.
        assert path.reserved() == 0
        cloud, local = attempts(path)
        assert (cloud["usage"], local["outcome"]) == ("worst_case", "ok")
        assert path.spent_tokens() == int(str(cloud["tokens_in"])) + int(str(cloud["tokens_out"]))
        assert path.spent_tokens() > 0


async def test_failover_mode_fail_ends_a_cut_answer_with_a_clear_error(tmp_path: Path) -> None:
    stream = ScriptedStream([completion("The tide")], then="cut")
    async with chat_path(tmp_path, failover="fail") as path:
        path.cloud.chat = answering(stream)
        received: list[ChatChunk] = []

        async def client() -> None:
            chat = path.service.chat(TO_CLOUD, CallContext(client_id="app"))
            async with contextlib.aclosing(chat):
                async for chunk in chat:
                    received.append(chunk)

        with pytest.raises(CloudStreamInterrupted, match="incomplete"):
            await client()

        assert text(received) == "The tide"
        assert path.engine.requests == [], "no local continuation in this mode"
        assert path.reserved() == 0


async def test_cancelling_a_cloud_answer_closes_the_connection_and_the_reservation(
    tmp_path: Path,
) -> None:
    stream = ScriptedStream([completion("Hi")], then="hang")
    async with chat_path(tmp_path) as path:
        path.cloud.chat = answering(stream)
        first = asyncio.Event()

        async def client() -> None:
            async for chunk in path.service.chat(TO_CLOUD, CallContext(client_id="app")):
                if chunk.delta:
                    first.set()

        task = asyncio.create_task(client())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert stream.closed, "the router connection was closed"
        assert path.engine.requests == [], "a cancel is not a failover"
        # The provider accepted it, so it may bill: settled at the worst case, none open.
        assert path.reserved() == 0
        (cloud,) = attempts(path)
        assert (cloud["outcome"], cloud["usage"]) == ("cancelled", "worst_case")
        worst_case = int(str(cloud["tokens_in"])) + int(str(cloud["tokens_out"]))
        assert path.spent_tokens() == worst_case
        assert worst_case > (TO_CLOUD.max_tokens or 0), "the prompt and every token it may write"


async def test_cancelling_a_local_answer_stops_the_generation_and_frees_admission(
    tmp_path: Path,
) -> None:
    async with chat_path(tmp_path) as path:
        path.engine.hold_after = 1

        async def client() -> list[ChatChunk]:
            return await path.run(ChatSpec(messages=HELLO))

        task = asyncio.create_task(client())
        await asyncio.wait_for(path.engine.holding.wait(), 5)
        assert path.admission.stats.active == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert path.engine.closed == 1, "the engine's generation was closed"
        assert path.admission.stats.active == 0
        (local,) = attempts(path)
        assert (local["destination"], local["outcome"]) == ("local", "cancelled")


async def test_a_cloud_tool_call_reaches_the_client_whole_with_finish_reason_tool_calls(
    tmp_path: Path,
) -> None:
    weather = ToolSpec("get_weather", "Weather of a city", '{"type": "object"}')

    def call(**fields: object) -> dict[str, object]:
        return {"index": 0, **fields}

    head = call(id="abcDEF123", type="function", function={"name": "get_weather"})
    frames = [
        {"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None},
        {"index": 0, "delta": {"tool_calls": [call(function={"arguments": '{"city":'})]}},
        {"index": 0, "delta": {"tool_calls": [call(function={"arguments": ' "Oslo"}'})]}},
        {"index": 0, "delta": {}, "finish_reason": "tool_calls"},
    ]
    events: list[dict[str, object] | str] = [
        {"id": "c", "model": CLOUD_MODEL, "choices": [frame]} for frame in frames
    ]
    stream = ScriptedStream([*events, "[DONE]"])
    spec = dataclasses.replace(TO_CLOUD, tools=(weather,), tool_choice="required")
    async with chat_path(tmp_path) as path:
        path.cloud.chat = answering(stream)
        chunks = await path.run(spec)

        body = json.loads(path.cloud.chats[0].content)
        assert body["tools"][0]["function"]["name"] == "get_weather"
        assert body["tool_choice"] == "required"
        final = chunks[-1]
        assert final.finish_reason == "tool_calls"
        assert final.tool_calls == (ToolCall("abcDEF123", "get_weather", '{"city": "Oslo"}'),)
        assert final.provenance is not None
        assert final.provenance.destination == "cloud"
        # No usage report: billed (and audited) at the worst case.
        assert path.reserved() == 0
        (cloud,) = attempts(path)
        assert cloud["usage"] == "worst_case"


async def test_an_answer_longer_than_the_context_is_refused_by_the_local_leg_naming_the_field(
    tmp_path: Path,
) -> None:
    async with chat_path(tmp_path) as path:
        assert path.engine.info is not None
        context = path.engine.info.context_length
        too_long = ChatSpec(messages=HELLO, max_tokens=context)

        with pytest.raises(InvalidArgument) as caught:
            await path.run(too_long)

        assert caught.value.field == "max_tokens"
        assert str(context) in str(caught.value)
        assert path.engine.requests == [], "refused before the engine"
        assert path.cloud.chats == [], "restricted by default: the cloud may not take it"
        (record,) = path.audit.records()
        assert record.reason == "reject.context_exceeded_and_data_class_local_only"
        assert [a["outcome"] for a in record.attempt_list()] == ["invalid_argument"]
