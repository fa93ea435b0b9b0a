"""Fixtures of the cloud tests: the loopback stand-in router and clients pointed at it."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from cloud_helpers import FAKE_TOKEN, MakeClient, fast_config
from fake_router import FakeRouter

from edge_agent.cloud import RouterClient


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread behind (server handlers must all be joined)."""
    before = set(threading.enumerate())
    yield
    leftover = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("asyncio_")
    ]
    for thread in leftover:
        thread.join(timeout=2)
    assert not [t.name for t in leftover if t.is_alive()], "threads outlived the test"


@pytest.fixture
def router() -> Iterator[FakeRouter]:
    server = FakeRouter(FAKE_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def make_client(router: FakeRouter) -> AsyncIterator[MakeClient]:
    clients: list[RouterClient] = []

    def make(
        *,
        token: str | None = FAKE_TOKEN,
        base_url: str | None = None,
        air_gapped: bool = False,
        **overrides: Any,
    ) -> RouterClient:
        config = fast_config(base_url or router.base_url, **overrides)
        client = RouterClient(config, lambda: token, air_gapped=air_gapped)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
    # Every task a test started must be finished by now (monitors stopped, streams closed).
    # asyncio's async-generator finalizer may still have a close task queued: let it run.
    current = asyncio.current_task()
    stray = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if stray:
        await asyncio.wait(stray, timeout=1.0)
    stray = [t for t in stray if not t.done()]
    assert not stray, f"tasks outlived the test: {stray}"


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
