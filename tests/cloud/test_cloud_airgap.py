"""Air-gapped: no name lookup, no socket, no connection, whatever is called.

Socket activity is observed by wrapping ``socket.socket`` creation and connect and the name
resolution functions for the whole process; the stand-in router also runs, so a request
that slipped through would show up there too.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import aclosing
from typing import Any

import httpx
import pytest
from cloud_helpers import FAKE_TOKEN, MakeClient, fast_config
from fake_router import FakeRouter

from edge_agent.chat import Message
from edge_agent.cloud import (
    CloudChatRequest,
    CloudDisabled,
    Connectivity,
    ConnectivityMonitor,
    RouterClient,
)

pytestmark = pytest.mark.timeout(15)

REQUEST = CloudChatRequest(messages=(Message("user", "hi"),))


@pytest.fixture
def socket_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records socket activity from now on (request it after ``router``, which listens)."""
    calls: list[str] = []
    real_init = socket.socket.__init__
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo
    real_create_connection = socket.create_connection

    def init(self: socket.socket, family: Any = -1, *args: Any, **kwargs: Any) -> None:
        if family in (socket.AF_INET, socket.AF_INET6):
            calls.append("socket")
        real_init(self, family, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        calls.append(f"connect {address}")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        calls.append(f"connect_ex {address}")
        return real_connect_ex(self, address)

    def getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        calls.append(f"getaddrinfo {args[:2]}")
        return real_getaddrinfo(*args, **kwargs)

    def create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        calls.append("create_connection")
        return real_create_connection(*args, **kwargs)

    monkeypatch.setattr(socket.socket, "__init__", init)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return calls


class ForbiddenTransport(httpx.AsyncBaseTransport):
    """Fails the test if anything reaches the network layer."""

    def __init__(self) -> None:
        self.used = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.used += 1
        raise AssertionError("an air-gapped client reached the transport")


async def _exercise(client: RouterClient) -> None:
    with pytest.raises(CloudDisabled, match="air-gapped"):
        async with aclosing(client.stream_chat(REQUEST)) as stream:
            [c async for c in stream]
    with pytest.raises(CloudDisabled, match="air-gapped"):
        await client.list_models()
    with pytest.raises(CloudDisabled, match="air-gapped"):
        await client.probe()


def test_the_observation_itself_works(router: FakeRouter, socket_calls: list[str]) -> None:
    # Guard against a vacuous proof: a real request is seen by the same instruments.
    httpx.get(f"{router.base_url}/models", headers={"Authorization": f"Bearer {FAKE_TOKEN}"})
    assert any(call.startswith("connect") for call in socket_calls)
    assert any(call.startswith("getaddrinfo") for call in socket_calls)


async def test_air_gapped_client_opens_no_socket(
    router: FakeRouter, socket_calls: list[str]
) -> None:
    forbidden = ForbiddenTransport()
    client = RouterClient(
        fast_config(router.base_url), lambda: FAKE_TOKEN, air_gapped=True, transport=forbidden
    )
    await _exercise(client)
    default_transport = RouterClient(
        fast_config(router.base_url), lambda: FAKE_TOKEN, air_gapped=True
    )
    await _exercise(default_transport)
    await client.aclose()
    await default_transport.aclose()
    assert socket_calls == []
    assert forbidden.used == 0
    assert router.requests == []


async def test_air_gapped_monitor_never_probes(router: FakeRouter, socket_calls: list[str]) -> None:
    client = RouterClient(fast_config(router.base_url), lambda: FAKE_TOKEN, air_gapped=True)
    monitor = ConnectivityMonitor(client)
    await monitor.start()
    await asyncio.sleep(0.3)  # six probe intervals
    snap = await monitor.probe_now()
    await monitor.stop()
    await client.aclose()
    assert snap.state is Connectivity.DISABLED
    assert snap.state.value == "disabled"
    assert snap.reason == "air_gapped"
    assert not snap.cloud_usable
    assert socket_calls == []
    assert router.requests == []


async def test_switching_to_air_gapped_at_runtime(
    router: FakeRouter, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client()
    await client.probe()  # a pooled connection now exists
    assert len(router.requests) == 1
    await client.set_air_gapped(True)
    calls: list[str] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        calls.append(str(address))
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    await _exercise(client)
    assert calls == []
    assert len(router.requests) == 1
    await client.set_air_gapped(False)
    await client.probe()
    assert len(router.requests) == 2


async def test_guard_transport_refuses_even_if_the_first_check_is_bypassed(
    router: FakeRouter,
) -> None:
    forbidden = ForbiddenTransport()
    client = RouterClient(fast_config(router.base_url), lambda: FAKE_TOKEN, transport=forbidden)
    http = client._client()  # built while allowed
    client._air_gapped = True  # flip without closing, as a buggy path might
    with pytest.raises(CloudDisabled):
        await http.get("models")
    assert forbidden.used == 0
    await client.aclose()
