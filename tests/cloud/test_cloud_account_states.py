"""What reached the router, the router's account and model states, and deadline budgets.

* ``CloudAttempt`` tells budgets whether a provider may bill a request (sent and accepted,
  or sent and never answered) or not (no connection, or refused with an error status).
* The router's error shapes: ``{"error": "text"}`` (402), OpenAI objects with
  ``code: "model_not_supported"`` (not the client's fault), and ``error`` events inside a
  200 stream that carry an HTTP status.
* ``failover_stream(cloud_deadline=…)``: the cloud gets only what the client's deadline
  leaves for a local answer, before and after its first token.
* The catalog picks a provider that supports what the request needs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import grpc
import pytest
from cloud_helpers import MakeClient
from fake_router import DEFAULT_MODEL, FakeRouter, Hang, Reply, Status

from edge_agent.chat import Message
from edge_agent.cloud import (
    CloudAttempt,
    CloudChatRequest,
    CloudModelUnavailable,
    CloudPaymentRequired,
    CloudRateLimited,
    CloudRouterError,
    CloudStreamError,
    Connectivity,
    ConnectivityMonitor,
    FailoverEvent,
    StreamChunk,
    failover_stream,
    parse_model_ref,
    parse_models_response,
)
from edge_agent.cloud._errors import error_for_status, error_in_stream

pytestmark = pytest.mark.timeout(20)

REQUEST = CloudChatRequest(messages=(Message("user", "hi"),))
NOT_SUPPORTED = (
    f"The requested model '{DEFAULT_MODEL}' is not supported by any provider you have enabled."
)


async def _attempt(make_client: MakeClient, **overrides: object) -> CloudAttempt:
    attempt = CloudAttempt()
    stream = make_client(**overrides).stream_chat(REQUEST, attempt=attempt)
    async with aclosing(stream):
        with pytest.raises(CloudRouterError):
            async for _ in stream:
                pass
    return attempt


async def test_a_refused_connection_sent_nothing(make_client: MakeClient, closed_port: int) -> None:
    attempt = await _attempt(make_client, base_url=f"http://127.0.0.1:{closed_port}/v1")
    assert (attempt.sent, attempt.status, attempt.may_be_billed) == (False, None, False)
    assert attempt.error_kind == "connect"


async def test_an_error_status_reached_the_router_but_no_provider_bills_it(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Status(503))
    attempt = await _attempt(make_client)
    assert (attempt.sent, attempt.status, attempt.accepted) == (True, 503, False)
    assert not attempt.may_be_billed
    assert len(router.chat_requests()) == 1


async def test_an_unanswered_request_may_be_billed(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Hang())
    attempt = await _attempt(make_client, total_timeout_s=0.5)
    assert (attempt.sent, attempt.status, attempt.error_kind) == (True, None, "timeout")
    assert attempt.may_be_billed  # nobody knows what the provider did


async def test_an_accepted_stream_may_be_billed_even_when_it_is_cut(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(after=2, then="cut"))
    attempt = await _attempt(make_client)
    assert (attempt.status, attempt.accepted, attempt.provider) == (200, True, "novita")
    assert attempt.may_be_billed and attempt.error_kind == "cut"


def test_402_as_a_bare_string_is_account_exhaustion() -> None:
    body = json.dumps({"error": "You have depleted your monthly included credits."}).encode()
    error = error_for_status(402, {}, body)
    assert isinstance(error, CloudPaymentRequired)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "depleted your monthly included credits" in error.message


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": NOT_SUPPORTED, "code": "model_not_supported"}},
        {
            "error": {
                "message": "nope",
                "type": "invalid_request_error",
                "code": "model_not_supported",
            }
        },
        {"error": NOT_SUPPORTED},  # only the text says it
    ],
)
def test_model_not_supported_is_not_blamed_on_the_client(body: object) -> None:
    error = error_for_status(400, {}, json.dumps(body).encode())
    assert isinstance(error, CloudModelUnavailable)
    assert error.kind == "model_unavailable"
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION  # not INVALID_ARGUMENT


def test_an_ordinary_400_still_blames_the_request() -> None:
    error = error_for_status(400, {}, b'{"error": {"message": "max_tokens too large"}}')
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"error": {"message": "no credits", "code": 402}}, CloudPaymentRequired),
        ({"error": {"message": "slow down", "status_code": "429"}}, CloudRateLimited),
        ({"error": {"message": NOT_SUPPORTED}}, CloudModelUnavailable),
        ({"error": {"message": "provider overloaded", "type": "server_error"}}, CloudStreamError),
        ({"error": "plain text"}, CloudStreamError),
    ],
)
def test_errors_inside_a_200_stream_keep_their_meaning(
    payload: object, expected: type[CloudRouterError]
) -> None:
    error = error_in_stream(payload, ("secret",))
    assert type(error) is expected


async def test_an_in_stream_402_reaches_the_breaker_as_account_exhaustion(
    router: FakeRouter, make_client: MakeClient
) -> None:
    client = make_client()
    monitor = ConnectivityMonitor(client)
    await monitor.probe_now()
    router.on_chat(
        Reply(
            after=0, then="error", error_payload={"error": {"message": "no credits", "code": 402}}
        )
    )
    attempt = CloudAttempt()
    stream = client.stream_chat(REQUEST, attempt=attempt)
    async with aclosing(stream):
        with pytest.raises(CloudPaymentRequired):
            async for _ in stream:
                pass
    assert attempt.error_kind == "account_exhausted"
    snap = monitor.snapshot()
    assert (snap.state, snap.reason) == (Connectivity.OFFLINE, "account_exhausted")
    assert snap.retry_in_s is not None and snap.retry_in_s > 0


async def test_a_model_marked_unavailable_recovers_after_the_hold(
    make_client: MakeClient,
) -> None:
    now = [1000.0]
    monitor = ConnectivityMonitor(make_client(breaker_max_open_s=5.0), clock=lambda: now[0])
    monitor.model_unavailable(DEFAULT_MODEL)
    assert monitor.is_model_unavailable(DEFAULT_MODEL)
    assert monitor.snapshot().unavailable_models == (DEFAULT_MODEL,)
    monitor.record_failure("model_unavailable")  # never moves the breaker
    assert monitor.snapshot().consecutive_failures == 0
    now[0] += 5.0
    assert not monitor.is_model_unavailable(DEFAULT_MODEL)
    assert monitor.snapshot().unavailable_models == ()


async def test_the_probe_age_is_measured(router: FakeRouter, make_client: MakeClient) -> None:
    wall = [5000.0]
    monitor = ConnectivityMonitor(make_client(), wall_clock=lambda: wall[0])
    assert monitor.snapshot().probe_age_s(wall[0]) is None
    await monitor.probe_now()
    wall[0] += 42.0
    assert monitor.snapshot().probe_age_s(wall[0]) == pytest.approx(42.0)
    router.on_models(Status(503))
    await monitor.probe_now()  # a failed probe is still a probe
    assert monitor.snapshot().probe_age_s(wall[0]) == 0


# -- deadline budget ---------------------------------------------------------------------


async def _local(prefix: str) -> AsyncGenerator[StreamChunk, None]:
    yield StreamChunk(" local" if prefix else "local", source="local")
    yield StreamChunk("", source="local", finish_reason="stop")


class Observer:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def record_success(self, latency_ms: float | None = None) -> None:
        pass

    def record_failure(self, kind: str, retry_after_s: float | None = None) -> None:
        self.failures.append(kind)


async def _budgeted(
    cloud: AsyncIterator[StreamChunk], budget_s: float, observer: Observer
) -> tuple[list[StreamChunk], list[FailoverEvent], float]:
    loop = asyncio.get_running_loop()
    events: list[FailoverEvent] = []
    started = loop.time()
    stream = failover_stream(
        cloud,
        _local,
        mode="continue_local",
        first_token_timeout_s=20.0,  # far beyond the budget: the budget must win
        inter_chunk_timeout_s=20.0,
        on_failover=events.append,
        observer=observer,
        cloud_deadline=started + budget_s,
    )
    async with aclosing(stream):
        chunks = [c async for c in stream]
    return chunks, events, loop.time() - started


async def test_a_silent_cloud_gets_only_its_budget_before_the_first_token(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(after=0, then="hang"))
    observer = Observer()
    chunks, events, took = await _budgeted(make_client().stream_chat(REQUEST), 0.3, observer)
    assert [c.source for c in chunks] == ["local", "local"]
    assert took < 2.0  # not first_token_timeout_s (20 s)
    assert [(e.stage, e.kind) for e in events] == [("before_first_token", "timeout")]
    assert observer.failures == ["timeout"]  # a silent router counts against it


async def test_a_slow_cloud_is_continued_locally_when_its_budget_ends(
    router: FakeRouter, make_client: MakeClient
) -> None:
    router.on_chat(Reply(chunk_delay_s=0.25))
    observer = Observer()
    chunks, events, _ = await _budgeted(make_client().stream_chat(REQUEST), 0.4, observer)
    sources = [c.source for c in chunks]
    assert sources[0] == "cloud" and sources[-1] == "local"
    assert "".join(c.delta for c in chunks).startswith("Hello")
    assert [(e.stage, e.action) for e in events] == [("mid_stream", "local")]
    # It was answering, only too slowly for this client: the route is not blamed.
    assert observer.failures == []


# -- capabilities ------------------------------------------------------------------------


def _offer(
    name: str, *, structured: bool | None, price: float, throughput: float
) -> dict[str, object]:
    return {
        "provider": name,
        "status": "live",
        "pricing": {"input": price, "output": price},
        "supports_structured_output": structured,
        "supports_tools": True,
        "throughput": throughput,
        "latency": 0.4,
    }


def test_the_provider_choice_respects_capabilities_and_the_selection_policy() -> None:
    catalog = parse_models_response(
        {
            "data": [
                {
                    "id": DEFAULT_MODEL,
                    "providers": [
                        _offer("cheap", structured=False, price=0.1, throughput=90),
                        _offer("mid", structured=True, price=0.5, throughput=40),
                        _offer("fast", structured=True, price=0.9, throughput=120),
                        _offer("unknown", structured=None, price=0.01, throughput=500),
                    ],
                }
            ]
        }
    )
    offer = catalog.offers(DEFAULT_MODEL)[2]
    assert (offer.throughput, offer.latency_s) == (120.0, 0.4)

    def choose(name: str, structured_output: bool = False) -> str | None:
        return catalog.choose_provider(parse_model_ref(name), structured_output=structured_output)

    # :cheapest alone may land on a provider without structured output; with the need, not.
    assert choose(f"{DEFAULT_MODEL}:cheapest") == "unknown"
    assert choose(f"{DEFAULT_MODEL}:cheapest", structured_output=True) == "mid"
    assert choose(f"{DEFAULT_MODEL}:fastest", structured_output=True) == "fast"
    assert choose(DEFAULT_MODEL, structured_output=True) == "fast"
    assert choose(f"{DEFAULT_MODEL}:cheap", structured_output=True) is None  # pinned, lacks it
    assert choose(f"{DEFAULT_MODEL}:mid", structured_output=True) == "mid"
    assert (
        catalog.choose_provider(
            parse_model_ref(f"{DEFAULT_MODEL}:fastest"),
            structured_output=True,
            allowed=frozenset({"mid"}),
        )
        == "mid"
    )


def test_a_tool_request_goes_only_to_a_provider_that_supports_tools() -> None:
    offers = [
        {**_offer("cheap", structured=True, price=0.1, throughput=90), "supports_tools": False},
        {**_offer("quiet", structured=True, price=0.2, throughput=80), "supports_tools": None},
        _offer("tooled", structured=True, price=0.7, throughput=60),
    ]
    catalog = parse_models_response({"data": [{"id": DEFAULT_MODEL, "providers": offers}]})
    cheapest = parse_model_ref(f"{DEFAULT_MODEL}:cheapest")
    assert catalog.choose_provider(cheapest) == "cheap"
    # Unknown support (None) is not support: a tool call must not be silently dropped.
    assert catalog.choose_provider(cheapest, tools=True) == "tooled"
    assert catalog.choose_provider(parse_model_ref(f"{DEFAULT_MODEL}:cheap"), tools=True) is None


async def test_a_429_without_retry_after_says_rate_limited_not_a_broken_uplink(
    router: FakeRouter, make_client: MakeClient
) -> None:
    client = make_client()
    monitor = ConnectivityMonitor(client)
    await monitor.probe_now()
    router.on_chat(Status(429))
    stream = client.stream_chat(REQUEST)
    async with aclosing(stream):
        with pytest.raises(CloudRateLimited):
            async for _ in stream:
                pass
    snap = monitor.snapshot()
    assert (snap.state, snap.reason, snap.last_failure_kind) == (
        Connectivity.DEGRADED,
        "rate_limited",
        "rate_limited",
    )


async def test_a_refusal_inside_the_stream_is_not_billable(
    router: FakeRouter, make_client: MakeClient
) -> None:
    limited = {"error": {"message": "slow down", "code": 429}}
    router.on_chat(Reply(after=0, then="error", error_payload=limited))
    attempt = await _attempt(make_client)
    assert (attempt.accepted, attempt.error_kind) == (True, "rate_limited")
    assert not attempt.may_be_billed
    router.on_chat(Reply(after=0, then="error"))  # a provider failure: it may have worked
    attempt = await _attempt(make_client)
    assert (attempt.error_kind, attempt.may_be_billed) == ("stream", True)
