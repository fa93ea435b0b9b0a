"""Shared pieces of the network tests: a real PKI in a temp dir and real grpc.aio servers."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from edge_agent._proto.edge_agent.v1 import (
    bundles_pb2,
    inference_pb2,
    inference_pb2_grpc,
    operator_pb2_grpc,
)
from edge_agent.rpc.auth import AuthInterceptor
from edge_agent.tls import (
    AuthConfig,
    Authenticator,
    BoundListener,
    CertificateAuthority,
    DeviceCertificate,
    IssuedCertificate,
    Listener,
    RateLimiter,
    TlsConfig,
    add_listeners,
    current_identity,
    ensure_device_certificate,
    init_ca,
    issue_client_certificate,
    secure_unix_sockets,
)


def _who() -> str:
    identity = current_identity()
    assert identity is not None, "the interceptor did not set the identity"
    return f"{identity.method}:{identity.name}:{identity.role}"


class EchoInference(inference_pb2_grpc.InferenceServicer):
    """Answers with who the interceptor said the caller is."""

    async def GetStatus(
        self, request: inference_pb2.GetStatusRequest, context: Any
    ) -> inference_pb2.GetStatusResponse:
        return inference_pb2.GetStatusResponse(device_id=_who())

    async def Chat(
        self, request: inference_pb2.ChatRequest, context: Any
    ) -> AsyncIterator[inference_pb2.ChatResponse]:
        for _ in range(2):
            yield inference_pb2.ChatResponse(delta=_who())


class EchoOperator(operator_pb2_grpc.OperatorServicer):
    async def PushBundle(
        self, request_iterator: AsyncIterator[bundles_pb2.PushBundleRequest], context: Any
    ) -> bundles_pb2.PushBundleResponse:
        size = 0
        async for item in request_iterator:
            size += len(item.chunk)
        return bundles_pb2.PushBundleResponse(outcome=f"{_who()}:{size}")


@dataclass(frozen=True)
class Pki:
    root: Path
    tls: TlsConfig
    device: DeviceCertificate
    ca: CertificateAuthority
    operator: IssuedCertificate
    client: IssuedCertificate
    rogue_operator: IssuedCertificate  # same shape, signed by a CA the box does not trust


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(root / "ca")
    rogue = init_ca(root / "rogue-ca")
    state = root / "state"
    tls = TlsConfig(
        cert_file=state / "tls" / "device.pem",
        key_file=state / "tls" / "device.key",
        client_ca_files=(root / "ca" / "ca.pem",),
        hostname="testbox",
        admin_socket=root / "run" / "admin.sock",
    )
    return Pki(
        root=root,
        tls=tls,
        device=ensure_device_certificate(tls),
        ca=ca,
        operator=issue_client_certificate(ca, name="fleet-console", role="operator"),
        client=issue_client_certificate(ca, name="hmi-3", role="client"),
        rogue_operator=issue_client_certificate(rogue, name="fleet-console", role="operator"),
    )


@dataclass
class Running:
    server: grpc.aio.Server
    bound: list[BoundListener]

    def port(self, security: str) -> int:
        return next(b.port for b in self.bound if b.listener.security == security)

    def unix_address(self) -> str:
        return next(b.listener.address for b in self.bound if b.listener.security == "unix")


@asynccontextmanager
async def serve(
    pki: Pki,
    auth: AuthConfig,
    plan: list[Listener],
    *,
    tls: TlsConfig | None = None,
    limiter: RateLimiter | None = None,
) -> AsyncIterator[Running]:
    """A real grpc.aio server with the box's credentials and the auth interceptor."""
    tls = tls or pki.tls
    interceptor = AuthInterceptor(
        Authenticator.from_config(tls, auth), limiter or RateLimiter(auth)
    )
    server = grpc.aio.server(interceptors=[interceptor])
    # The generated bases answer UNIMPLEMENTED for the methods these echo servicers skip.
    inference_pb2_grpc.add_InferenceServicer_to_server(EchoInference(), server)  # type: ignore[abstract]
    operator_pb2_grpc.add_OperatorServicer_to_server(EchoOperator(), server)  # type: ignore[abstract]
    bound = add_listeners(server, plan, tls, pki.device)
    await server.start()
    secure_unix_sockets(bound, tls.admin_socket_mode)
    try:
        yield Running(server, bound)
    finally:
        await server.stop(None)


def strict_auth(**changes: Any) -> AuthConfig:
    """No anonymous loopback: a loopback TLS listener then behaves like a LAN one."""
    return dataclasses.replace(AuthConfig(allow_anonymous_loopback=False), **changes)


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread behind (zeroconf, executors)."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith("asyncio_")
    ]
    # grpc's own poller threads are process-wide and shared; they are not ours to join.
    leaked = [t for t in leaked if "_poll_wrapper" not in t.name]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
