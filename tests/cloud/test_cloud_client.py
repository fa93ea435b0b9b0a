"""The router client against the loopback stand-in router: happy paths and every fault."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from decimal import Decimal

import pytest
from cloud_helpers import FAKE_TOKEN, MakeClient
from fake_router import DEFAULT_WORDS, FakeRouter, Hang, Reply, Status

from edge_agent.chat import Message
from edge_agent.cloud import (
    CloudAuthError,
    CloudBadRequest,
    CloudChatRequest,
    CloudConnectError,
    CloudDisabled,
    CloudForbidden,
    CloudHTTPError,
    CloudModelNotFound,
    CloudPaymentRequired,
    CloudProtocolError,
    CloudRateLimited,
    CloudRouterError,
    CloudServerError,
    CloudStreamCut,
    CloudStreamError,
    CloudTimeout,
    ModelRef,
    RouterClient,
    StreamChunk,
    cost_usd,
)
from edge_agent.errors import InvalidArgument

pytestmark = pytest.mark.timeout(15)

REQUEST = CloudChatRequest(messages=(Message("user", "hi"),), max_tokens=16)


async def collect(client: RouterClient, request: CloudChatRequest = REQUEST) -> list[StreamChunk]:
    async with aclosing(client.stream_chat(request)) as stream:
        return [chunk async for chunk in stream]


async def collect_into(client: RouterClient, received: list[str]) -> None:
    async with aclosing(client.stream_chat(REQUEST)) as stream:
        async for chunk in stream:
            received.append(chunk.delta)


async def test_streams_deltas_then_one_final_chunk_with_usage(
    router: FakeRouter, make_client: MakeClient
) -> None:
    chunks = await collect(make_client())
    assert "".join(c.delta for c in chunks) == "".join(DEFAULT_WORDS)
    assert [c.delta for c in chunks[:-1]] == list(DEFAULT_WORDS)
    final = chunks[-1]
    assert final.delta == ""
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (11, 5)
    assert all(c.source == "cloud" and c.provider == "novita" for c in chunks)
    assert final.model == "org/big-model"
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_request_shape_headers_and_policy_suffix(
    router: FakeRouter, make_client: MakeClient
) -> None:
    client = make_client(bill_to="my-clinic")
    request = CloudChatRequest(
        messages=(Message("system", "be brief"), Message("user", "hi")),
        model="org/big-model:cheapest",
        max_tokens=32,
        temperature=0.2,
        stop=("\n\n",),
        seed=7,
        json_schema='{"type": "object"}',
    )
    await collect(client, request)
    (recorded,) = router.chat_requests()
    body = recorded.body
    assert body["model"] == "org/big-model:cheapest"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (32, 0.2, 7)
    assert body["stop"] == ["\n\n"]
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert "top_p" not in body
    assert recorded.headers["authorization"] == f"Bearer {FAKE_TOKEN}"
    assert recorded.headers["x-hf-bill-to"] == "my-clinic"
    assert recorded.headers["accept"] == "text/event-stream"


async def test_no_bill_to_header_by_default(router: FakeRouter, make_client: MakeClient) -> None:
    await collect(make_client())
    assert "x-hf-bill-to" not in router.chat_requests()[0].headers


async def test_crlf_events_and_missing_provider_header(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(crlf=True, provider=None, usage=False))
    chunks = await collect(make_client())
    assert "".join(c.delta for c in chunks) == "".join(DEFAULT_WORDS)
    assert chunks[-1].usage is None
    assert chunks[-1].provider is None


async def test_pinned_provider_is_reported_when_router_does_not_say(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(provider=None))
    request = CloudChatRequest(messages=REQUEST.messages, model="org/big-model:together")
    chunks = await collect(make_client(), request)
    assert chunks[-1].provider == "together"


async def test_invalid_model_suffix_is_refused_before_any_request(
    router: FakeRouter, make_client: MakeClient
) -> None:
    request = CloudChatRequest(messages=REQUEST.messages, model="org/big-model:Fast est")
    with pytest.raises(InvalidArgument):
        await collect(make_client(), request)
    assert router.requests == []


async def test_list_models_and_cost(router: FakeRouter, make_client: MakeClient) -> None:
    catalog = await make_client().list_models()
    ref = ModelRef("org/big-model", policy="cheapest")
    assert catalog.is_available(ref)
    pricing = catalog.pricing_for(ref)
    assert pricing is not None
    assert pricing.output_per_mtok == Decimal("0.6")
    chunks = await collect(make_client())
    usage = chunks[-1].usage
    assert usage is not None
    actual = catalog.pricing_for(ref, provider=chunks[-1].provider)
    assert actual is not None
    assert cost_usd(usage, actual) == Decimal("0.0000062")  # 11*0.2 + 5*0.8 per million


async def test_probe_measures_a_round_trip(router: FakeRouter, make_client: MakeClient) -> None:
    latency = await make_client().probe()
    assert latency >= 0.0
    assert router.requests[-1].method == "HEAD"


@pytest.mark.parametrize(
    ("status", "error", "code_name"),
    [
        (400, CloudBadRequest, "INVALID_ARGUMENT"),
        (401, CloudAuthError, "UNAVAILABLE"),
        (402, CloudPaymentRequired, "RESOURCE_EXHAUSTED"),
        (403, CloudForbidden, "UNAVAILABLE"),
        (404, CloudModelNotFound, "NOT_FOUND"),
        (409, CloudHTTPError, "UNAVAILABLE"),
        (422, CloudBadRequest, "INVALID_ARGUMENT"),
        (500, CloudServerError, "UNAVAILABLE"),
        (502, CloudServerError, "UNAVAILABLE"),
        (503, CloudServerError, "UNAVAILABLE"),
    ],
)
async def test_error_statuses_are_mapped(
    router: FakeRouter,
    make_client: MakeClient,
    status: int,
    error: type[CloudRouterError],
    code_name: str,
) -> None:
    router.on_chat(Status(status, {"error": {"message": f"upstream says {status}"}}))
    with pytest.raises(error) as info:
        await collect(make_client())
    assert type(info.value) is error
    assert info.value.code.name == code_name
    assert f"upstream says {status}" in info.value.message
    assert info.value.status == status


async def test_wrong_token_is_a_401_auth_error(router: FakeRouter, make_client: MakeClient) -> None:
    with pytest.raises(CloudAuthError, match="401"):
        await collect(make_client(token="hf_wrong"))


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [({"Retry-After": "7"}, 7.0), ({}, None), ({"Retry-After": "x"}, None)],
)
async def test_429_with_and_without_retry_after(
    router: FakeRouter,
    make_client: MakeClient,
    headers: dict[str, str],
    retry_after: float | None,
) -> None:
    router.on_chat(Status(429, {"error": "slow down"}, headers))
    with pytest.raises(CloudRateLimited) as info:
        await collect(make_client())
    assert info.value.retry_after_s == retry_after
    assert info.value.retry_after_ms == (None if retry_after is None else 7000)


async def test_connection_refused(make_client: MakeClient, closed_port: int) -> None:
    client = make_client(base_url=f"http://127.0.0.1:{closed_port}/v1")
    with pytest.raises(CloudConnectError):
        await collect(client)
    with pytest.raises(CloudConnectError):
        await client.probe()
    with pytest.raises(CloudConnectError):
        await client.list_models()


async def test_server_that_never_answers_hits_the_total_deadline(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Hang())
    client = make_client(total_timeout_s=0.5, read_timeout_s=10.0)
    with pytest.raises(CloudTimeout, match="did not answer in time"):
        await collect(client)


async def test_per_request_timeout_shortens_the_deadline(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Hang())
    client = make_client(total_timeout_s=30.0, read_timeout_s=30.0)

    async def consume() -> None:
        async with asyncio.timeout(5), aclosing(client.stream_chat(REQUEST, timeout_s=0.3)) as s:
            [c async for c in s]

    with pytest.raises(CloudTimeout):
        await consume()


async def test_httpx_read_timeout_is_mapped(router: FakeRouter, make_client: MakeClient) -> None:
    router.on_chat(Hang())
    with pytest.raises(CloudTimeout, match="stopped sending"):
        await collect(make_client(read_timeout_s=0.2, total_timeout_s=5.0))


async def test_slow_first_byte_within_deadline_is_fine(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(first_byte_delay_s=0.2))
    chunks = await collect(make_client())
    assert chunks[-1].finish_reason == "stop"


async def test_slow_first_byte_beyond_deadline_times_out(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(first_byte_delay_s=2.0))
    with pytest.raises(CloudTimeout):
        await collect(make_client(total_timeout_s=0.4))


async def test_slow_loris_drip_is_cut_by_the_idle_deadline(
    router: FakeRouter, make_client: MakeClient
) -> None:
    # Bytes keep arriving (httpx's read timeout never fires) but no event ever completes.
    router.on_chat(Reply(after=1, then="drip", drip_interval_s=0.02))
    received: list[str] = []
    with pytest.raises(CloudTimeout, match="silent between events"):
        await collect_into(make_client(event_timeout_s=0.3), received)
    assert received == [DEFAULT_WORDS[0]]


async def test_stalled_stream_hits_the_idle_deadline(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(after=2, then="hang"))
    with pytest.raises(CloudTimeout):
        await collect(make_client(event_timeout_s=0.2))


@pytest.mark.parametrize(
    ("then", "error"),
    [
        ("cut", CloudStreamCut),
        ("eof", CloudStreamCut),
        ("malformed", CloudProtocolError),
        ("bad_utf8", CloudProtocolError),
        ("error", CloudStreamError),
    ],
)
async def test_stream_faults_after_two_tokens(
    router: FakeRouter, make_client: MakeClient, then: str, error: type[CloudRouterError]
) -> None:
    router.on_chat(Reply(after=2, then=then))  # type: ignore[arg-type]
    received: list[str] = []
    with pytest.raises(error) as info:
        await collect_into(make_client(), received)
    assert received == list(DEFAULT_WORDS[:2])
    if then == "error":
        assert "provider overloaded" in info.value.message


async def test_non_event_stream_answer_is_a_protocol_error(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(content_type="text/html"))
    with pytest.raises(CloudProtocolError, match="event stream"):
        await collect(make_client())


async def test_models_endpoint_faults(router: FakeRouter, make_client: MakeClient) -> None:
    client = make_client()
    router.on_models(Status(503), Status(200, b"not json"), Status(200, {"data": 3}), Hang())
    with pytest.raises(CloudServerError):
        await client.list_models()
    with pytest.raises(CloudProtocolError):
        await client.list_models()
    with pytest.raises(CloudProtocolError):
        await client.list_models()
    with pytest.raises(CloudTimeout):
        await client.list_models(timeout_s=0.3)


async def test_probe_faults(router: FakeRouter, make_client: MakeClient) -> None:
    client = make_client()
    router.on_models(Status(429, None, {"Retry-After": "3"}), Status(500), Hang())
    with pytest.raises(CloudRateLimited) as info:
        await client.probe()
    assert info.value.retry_after_s == 3.0
    with pytest.raises(CloudServerError):
        await client.probe()
    with pytest.raises(CloudTimeout):
        await client.probe(timeout_s=0.3)


async def test_no_credential_means_disabled_and_no_request(
    router: FakeRouter, make_client: MakeClient
) -> None:
    client = make_client(token=None)
    assert not client.has_credential()
    with pytest.raises(CloudDisabled):
        await collect(client)
    with pytest.raises(CloudDisabled):
        await client.probe()
    assert router.requests == []


async def test_abandoned_stream_releases_the_connection(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(after=2, then="hang"))
    client = make_client()
    async with aclosing(client.stream_chat(REQUEST)) as stream:
        async for _ in stream:
            break
    # The next request works at once: the hung response did not keep the pool busy.
    chunks = await collect(client)
    assert chunks[-1].finish_reason == "stop"


async def test_closed_client_refuses(make_client: MakeClient) -> None:
    client = make_client()
    await client.aclose()
    with pytest.raises(CloudDisabled, match="closed"):
        await client.probe()
