"""The transport layer under the router client: the air-gap guard and the shared TLS context."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable

import httpx

from edge_agent.cloud._errors import CloudDisabled

__all__ = ["AirGapGuard", "tls_context"]


@functools.cache
def tls_context() -> ssl.SSLContext:
    # Loading the CA bundle costs a noticeable fraction of a second on a small box; clients
    # are re-created (air-gap toggles, config reloads), the verified context can be shared.
    return httpx.create_ssl_context()


class AirGapGuard(httpx.AsyncBaseTransport):
    """Refuses to send while the client is air-gapped: the last line before a socket."""

    def __init__(self, inner: httpx.AsyncBaseTransport, blocked: Callable[[], bool]) -> None:
        self._inner = inner
        self._blocked = blocked

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._blocked():
            raise CloudDisabled("the cloud route is disabled: this box is air-gapped")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
