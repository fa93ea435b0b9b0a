"""The HTTP endpoint Prometheus scrapes, on its own thread (prometheus_client's WSGI server).

Scrapes never touch the event loop: state families read immutable snapshots by reference.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from edge_agent.errors import ConfigError
from edge_agent.metrics._metrics import Metrics

__all__ = ["MetricsServer"]

_log = logging.getLogger(__name__)


class MetricsServer:
    """``start()`` binds and serves ``/metrics``; ``stop()`` shuts down and joins the thread."""

    def __init__(self, metrics: Metrics, address: str = "127.0.0.1", port: int = 9464) -> None:
        self._metrics = metrics
        self._address = address
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when configured with port 0)."""
        if self._server is None:
            raise RuntimeError("metrics server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self._address}]" if ":" in self._address else self._address
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            server, thread = start_http_server(
                self._port, addr=self._address, registry=self._metrics.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot listen on {self._address}:{self._port}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from exc
        self._server, self._thread = server, thread
        _log.info("metrics endpoint listening on %s", self.url)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    async def aclose(self) -> None:
        """``stop()`` off the event loop (shutdown waits for the serve loop's poll tick)."""
        await asyncio.to_thread(self.stop)
