"""Circuit breaker and connectivity monitor."""

from __future__ import annotations

import asyncio
import functools
from contextlib import aclosing

import pytest
from cloud_helpers import MakeClient
from fake_router import FakeRouter, Hang, Status

from edge_agent.chat import Message
from edge_agent.cloud import (
    BreakerState,
    CircuitBreaker,
    CloudChatRequest,
    CloudRouterError,
    Connectivity,
    ConnectivityMonitor,
    ConnectivitySnapshot,
)

pytestmark = pytest.mark.timeout(15)

REQUEST = CloudChatRequest(messages=(Message("user", "hi"),))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so mypy does not keep a narrowed property across calls


def test_breaker_opens_after_threshold_and_recovers_through_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, open_s=10, max_open_s=40, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    for _ in range(3):
        breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert breaker.open_remaining_s() == 10
    breaker.record_success()  # a success during the cooldown does not close it early
    assert state(breaker) is BreakerState.OPEN
    clock.now += 10
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.record_failure()  # a failed trial reopens, for twice as long
    assert state(breaker) is BreakerState.OPEN
    assert breaker.open_remaining_s() == 20
    clock.now += 20
    breaker.record_failure()
    assert breaker.open_remaining_s() == 40
    clock.now += 40
    breaker.record_failure()
    assert breaker.open_remaining_s() == 40  # capped
    clock.now += 40
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    for _ in range(3):
        breaker.record_failure()
    assert breaker.open_remaining_s() == 10  # the doubling was reset by the success


def test_breaker_trip_is_clamped() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, open_s=10, max_open_s=40, clock=clock)
    breaker.trip(1)
    assert breaker.open_remaining_s() == 10
    breaker.trip(1000)
    assert breaker.open_remaining_s() == 40
    breaker.trip(5)  # never shortens an open period
    assert breaker.open_remaining_s() == 40


async def test_probe_cycle_online_degraded_offline_recovering_online(
    router: FakeRouter, make_client: MakeClient
) -> None:
    seen: list[ConnectivitySnapshot] = []
    monitor = ConnectivityMonitor(make_client(), on_change=seen.append)
    first = monitor.snapshot()
    assert (first.state, first.reason) == (Connectivity.OFFLINE, "not_checked")
    snap = await monitor.probe_now()
    assert (snap.state, snap.reason) == (Connectivity.ONLINE, "ok")
    assert router.requests[-1].method == "GET"  # the first probe loads the catalog
    assert monitor.catalog is not None
    assert "org/big-model" in monitor.catalog.models
    snap = await monitor.probe_now()
    assert router.requests[-1].method == "HEAD"  # later probes are cheap
    assert snap.probes_ok == 2

    router.on_models(Status(503), Status(503))
    snap = await monitor.probe_now()
    assert (snap.state, snap.reason) == (Connectivity.DEGRADED, "recent_failures")
    assert snap.cloud_usable
    snap = await monitor.probe_now()
    assert (snap.state, snap.reason) == (Connectivity.OFFLINE, "unreachable")
    assert snap.breaker is BreakerState.OPEN
    assert snap.last_failure_kind == "server"
    assert snap.retry_in_s is not None and 0 < snap.retry_in_s <= 0.3
    await asyncio.sleep(0.35)
    snap = monitor.snapshot()
    assert (snap.state, snap.reason) == (Connectivity.DEGRADED, "recovering")
    snap = await monitor.probe_now()
    assert (snap.state, snap.reason) == (Connectivity.ONLINE, "ok")
    states = [(s.state.value, s.reason) for s in seen]
    assert states == [
        ("online", "ok"),
        ("degraded", "recent_failures"),
        ("offline", "unreachable"),
        ("online", "ok"),
    ]


async def test_rate_limit_with_retry_after_holds_the_breaker_open(
    router: FakeRouter, make_client: MakeClient
) -> None:
    monitor = ConnectivityMonitor(make_client())
    await monitor.probe_now()
    router.on_models(Status(429, None, {"Retry-After": "1"}))
    snap = await monitor.probe_now()
    assert (snap.state, snap.reason) == (Connectivity.OFFLINE, "rate_limited")
    assert snap.retry_in_s is not None and 0.5 < snap.retry_in_s <= 1.0
    # Reachable again, but the router asked for a pause: it stays open until then.
    snap = await monitor.probe_now()
    assert snap.state is Connectivity.OFFLINE


async def test_rejected_credential_trips_at_once(
    router: FakeRouter, make_client: MakeClient
) -> None:
    monitor = ConnectivityMonitor(make_client(token="hf_revoked"))
    snap = await monitor.probe_now()
    assert (snap.state, snap.reason) == (Connectivity.OFFLINE, "credential_rejected")
    assert snap.last_failure_kind == "auth"
    assert snap.retry_in_s is not None and snap.retry_in_s > 0.5  # the maximum hold


async def test_real_request_outcomes_feed_the_breaker(
    router: FakeRouter, make_client: MakeClient
) -> None:
    client = make_client()
    monitor = ConnectivityMonitor(client)
    await monitor.probe_now()

    async def chat() -> None:
        async with aclosing(client.stream_chat(REQUEST)) as stream:
            [c async for c in stream]

    await chat()
    assert monitor.snapshot().requests_ok == 1
    assert monitor.snapshot().last_latency_ms is not None
    router.on_chat(Status(404), Status(400))
    for _ in range(2):
        with pytest.raises(CloudRouterError):
            await chat()
    snap = monitor.snapshot()
    assert snap.state is Connectivity.ONLINE  # request-specific refusals say nothing of the route
    assert snap.requests_failed == 2
    router.on_chat(Status(502), Status(502))
    for _ in range(2):
        with pytest.raises(CloudRouterError):
            await chat()
    snap = monitor.snapshot()
    assert (snap.state, snap.reason) == (Connectivity.OFFLINE, "unreachable")
    assert snap.requests_failed == 4
    router.on_chat(Status(402))
    with pytest.raises(CloudRouterError):
        await chat()
    assert monitor.snapshot().reason == "account_exhausted"


async def test_slow_round_trips_mean_degraded(router: FakeRouter, make_client: MakeClient) -> None:
    monitor = ConnectivityMonitor(make_client(degraded_latency_ms=1.0))
    monitor.record_success(latency_ms=50.0)
    assert (monitor.snapshot().state, monitor.snapshot().reason) == (Connectivity.DEGRADED, "slow")
    monitor.record_success(latency_ms=0.5)
    assert monitor.snapshot().state is Connectivity.ONLINE


async def test_no_credential_is_disabled_and_silent(
    router: FakeRouter, make_client: MakeClient
) -> None:
    monitor = ConnectivityMonitor(make_client(token=None))
    await monitor.start()
    await asyncio.sleep(0.2)
    snap = await monitor.probe_now()
    await monitor.stop()
    assert (snap.state, snap.reason) == (Connectivity.DISABLED, "no_credential")
    assert router.requests == []


async def test_background_loop_probes_and_stops_cleanly(
    router: FakeRouter, make_client: MakeClient
) -> None:
    monitor = ConnectivityMonitor(make_client())
    await monitor.start()
    await monitor.start()  # idempotent
    async with asyncio.timeout(5):
        while monitor.snapshot().probes_ok < 3:  # noqa: ASYNC110  # polling a counter
            await asyncio.sleep(0.02)
    assert monitor.snapshot().state is Connectivity.ONLINE
    await monitor.stop()
    await monitor.stop()  # idempotent
    count = len(router.requests)
    await asyncio.sleep(0.2)
    assert len(router.requests) == count  # nothing probes after stop


async def test_stop_during_a_hung_probe(router: FakeRouter, make_client: MakeClient) -> None:
    router.on_models(Hang())
    monitor = ConnectivityMonitor(make_client(event_timeout_s=30.0))
    await monitor.start()
    async with asyncio.timeout(5):
        while not router.requests:  # noqa: ASYNC110  # the router is another thread
            await asyncio.sleep(0.01)
    await monitor.stop()  # cancels the in-flight probe; the fixture checks no task is left


async def test_failing_probes_back_off_exponentially_with_jitter(
    make_client: MakeClient, closed_port: int
) -> None:
    client = make_client(
        base_url=f"http://127.0.0.1:{closed_port}/v1",
        probe_backoff_initial_s=1.0,
        probe_backoff_max_s=8.0,
    )
    for jitter, expected in ((1.0, [1.0, 2.0, 4.0, 8.0, 8.0]), (0.0, [4.0, 4.0])):
        monitor = ConnectivityMonitor(client, rng=functools.partial(float, jitter))
        if jitter == 0.0:
            monitor._probe_failures = 3
        delays = [await monitor._tick() for _ in expected]
        assert delays == expected
    assert monitor.snapshot().probes_failed == 2
    assert monitor.snapshot().last_failure_kind == "connect"


async def test_on_change_callback_errors_do_not_break_the_monitor(
    router: FakeRouter, make_client: MakeClient
) -> None:
    def explode(_: ConnectivitySnapshot) -> None:
        raise RuntimeError("callback bug")

    monitor = ConnectivityMonitor(make_client(), on_change=explode)
    snap = await monitor.probe_now()
    assert snap.state is Connectivity.ONLINE
