"""The HTTP endpoint Prometheus scrapes, on its own thread (prometheus_client's WSGI app).

Scrapes never touch the event loop: state families read immutable snapshots by reference.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import socketserver
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from edge_agent.errors import ConfigError
from edge_agent.metrics._metrics import Metrics

__all__ = ["MetricsServer"]

_log = logging.getLogger(__name__)


class _MetricsHTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # http.server's own server_bind asks socket.getfqdn(host): a reverse DNS query at
        # every start, which leaves the box (air-gapped or not) when the address has no
        # /etc/hosts entry. The WSGI environ only needs a name, the address will do.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


def _serve(address: str, port: int, app: Any) -> tuple[WSGIServer, threading.Thread]:
    v6 = address != "localhost" and ipaddress.ip_address(address).version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    server_class = type("MetricsHTTPServer", (_MetricsHTTPServer,), {"address_family": family})
    server: WSGIServer = make_server(address, port, app, server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread


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
            server, thread = _serve(
                self._address, self._port, make_wsgi_app(self._metrics.registry)
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
