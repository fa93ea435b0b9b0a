"""uvicorn on the daemon's own event loop, one server per ``http.listen`` address.

The daemon owns the signals (SIGTERM starts its staged stop), so uvicorn's signal capture
is switched off; sockets are bound here, so port 0 works and a bind failure is a
ConfigError at start. TLS follows the gRPC rule: plaintext on loopback (or with
``tls.allow_plaintext``), the device certificate everywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

from edge_agent.config import HttpConfig
from edge_agent.errors import ConfigError
from edge_agent.tls import DeviceCertificate, TlsConfig, is_loopback_address

__all__ = ["HttpServer", "needs_tls"]

_log = logging.getLogger(__name__)


def needs_tls(tls: TlsConfig, address: str) -> bool:
    return not (tls.allow_plaintext or is_loopback_address(address))


class _LoopServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the daemon."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class _Bound:
    address: str
    server: _LoopServer
    sock: socket.socket
    task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, int(port)), family=family, backlog=1024)
    except OSError as exc:
        raise ConfigError(
            f"http.listen: cannot listen on {address} ({exc.strerror or type(exc).__name__})"
        ) from exc
    # asyncio switches Nagle off only on sockets whose proto is IPPROTO_TCP, which
    # create_server's are not; accepted sockets inherit this. With Nagle on, a response's
    # body (written after its headers) waited for the client's delayed ACK: +40 ms on the
    # next answer of a kept-alive client and on SSE events (measured, bench_http.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class HttpServer:
    """Binds at :meth:`start`; :meth:`stop` drains within ``grace_s`` like the gRPC server."""

    def __init__(
        self,
        app: ASGIApp,
        config: HttpConfig,
        tls: TlsConfig,
        device: DeviceCertificate | None,
        *,
        grace_s: float,
    ) -> None:
        self._app = app
        self._grace_s = grace_s
        self._config = config
        self._tls = tls
        self._device = device
        self._bound: list[_Bound] = []

    @property
    def ports(self) -> list[int]:
        """The bound port of each ``http.listen`` address, in order."""
        return [b.port for b in self._bound]

    @property
    def bound(self) -> list[str]:
        """``http.listen`` with each address's bound port (``:0`` resolved)."""
        return [f"{b.address.rpartition(':')[0]}:{b.port}" for b in self._bound]

    def _uvicorn_config(self, address: str) -> uvicorn.Config:
        ssl: dict[str, str] = {}
        if needs_tls(self._tls, address):
            if self._device is None:
                raise ConfigError(f"http.listen: {address} needs TLS but there is no certificate")
            if self._tls.require_client_cert:
                raise ConfigError(
                    "http.listen: tls.require_client_cert is set, but the HTTP API "
                    "authenticates with tokens only; serve it on loopback or drop the setting"
                )
            ssl = {"ssl_certfile": str(self._tls.cert_file), "ssl_keyfile": str(self._tls.key_file)}
        return uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            access_log=False,
            http="httptools",
            server_header=False,
            timeout_graceful_shutdown=max(1, round(self._grace_s)),
            **ssl,  # type: ignore[arg-type]
        )

    async def start(self) -> None:
        for address in self._config.listen:
            config = self._uvicorn_config(address)
            sock = _bind(address)
            self._bound.append(_Bound(address, _LoopServer(config), sock))
        for bound in self._bound:
            bound.task = asyncio.create_task(
                bound.server.serve(sockets=[bound.sock]), name=f"http {bound.address}"
            )
        for bound in self._bound:
            while not bound.server.started:
                if bound.task is not None and bound.task.done():
                    bound.task.result()  # re-raise what stopped it
                    raise ConfigError(f"http.listen: the server on {bound.address} did not start")
                await asyncio.sleep(0.01)
            scheme = "https" if needs_tls(self._tls, bound.address) else "http"
            host = bound.address.rpartition(":")[0]
            _log.info("OpenAI-compatible API on %s://%s:%d/v1", scheme, host, bound.port)

    async def stop(self) -> None:
        """Refuse new connections at once; let running answers finish within the grace."""
        for bound in self._bound:
            bound.server.should_exit = True
        tasks = [b.task for b in self._bound if b.task is not None]
        try:
            async with asyncio.timeout(self._grace_s + 2.0):
                await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            for bound in self._bound:
                bound.server.force_exit = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            # Also the sockets of a start that failed half-way (a later address in use).
            for bound in self._bound:
                bound.sock.close()
