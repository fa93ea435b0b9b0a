"""Which address gets which transport, and the gRPC server credentials for TLS.

Rule: TLS on every non-loopback address; plaintext only on loopback or when
``tls.allow_plaintext = true``; the box's own administrator uses a Unix socket whose file
mode and group are its access control.

gRPC Python can only *require* client certificates or not ask for them at all (there is no
"optional, verified when presented" mode). So a LAN address gets two listeners: ``tls``
(server-authenticated; clients prove themselves with tokens) on the configured port, and
``mtls`` (client certificate required and verified against ``tls.client_ca_files``) on
``tls.mtls_port``: the port operators use.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc

from edge_agent.errors import ConfigError
from edge_agent.tls._config import TlsConfig
from edge_agent.tls._device import DeviceCertificate

__all__ = [
    "BoundListener",
    "Listener",
    "add_listeners",
    "is_loopback_address",
    "listen_plan",
    "secure_unix_sockets",
    "server_credentials",
]

Security = Literal["tls", "mtls", "plaintext", "unix"]


@dataclass(frozen=True, slots=True)
class Listener:
    """One address the server binds. ``address`` is in gRPC's form (``host:port``, ``unix:…``)."""

    address: str
    security: Security


@dataclass(frozen=True, slots=True)
class BoundListener:
    listener: Listener
    port: int  # the bound TCP port (useful with port 0); 0 for Unix sockets


def _split(address: str) -> tuple[str, str]:
    """``(host, port)``; IPv6 hosts keep no brackets."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {address!r} needs a port (host:port)")
    return host.removeprefix("[").removesuffix("]"), port


def _split_host(address: str) -> str:
    return _split(address)[0]


def is_loopback_address(address: str) -> bool:
    """``127.0.0.1:50051``, ``[::1]:0``, ``localhost:50051`` → True; ``0.0.0.0:…`` → False."""
    host = _split_host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_plan(tls: TlsConfig, addresses: Sequence[str]) -> list[Listener]:
    """Decide each address's transport, plus the admin Unix socket when enabled."""
    plan: list[Listener] = []
    with_mtls = bool(tls.client_ca_files) and not tls.require_client_cert
    for address in addresses:
        if address.startswith("unix:"):
            plan.append(Listener(address, "unix"))
        elif tls.allow_plaintext or is_loopback_address(address):
            plan.append(Listener(address, "plaintext"))
        else:
            plan.append(Listener(address, "mtls" if tls.require_client_cert else "tls"))
            if with_mtls:
                host = _split_host(address)
                host = f"[{host}]" if ":" in host else host
                plan.append(Listener(f"{host}:{tls.mtls_port}", "mtls"))
    if tls.admin_socket_enabled:
        plan.append(Listener(f"unix:{tls.admin_socket}", "unix"))
    return plan


def server_credentials(
    tls: TlsConfig, device: DeviceCertificate, *, require_client_cert: bool
) -> grpc.ServerCredentials:
    """TLS credentials with the device certificate, requiring a client certificate or not.

    When required, gRPC verifies it against ``tls.client_ca_files``; the auth interceptor
    verifies it again and reads the role (and checks revocation) from it.
    """
    roots = b""
    for path in tls.client_ca_files:
        try:
            roots += path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"tls.client_ca_files: cannot read {path.name} ({exc.strerror})"
            ) from exc
    if require_client_cert and not roots:
        raise ConfigError("client certificates need tls.client_ca_files")
    return grpc.ssl_server_credentials(
        [(device.key_pem, device.cert_pem)],
        root_certificates=roots if require_client_cert else None,
        require_client_auth=require_client_cert,
    )


def _prepare_unix_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"admin socket path {path.name!r} exists and is not a socket")
    # A stale socket from a previous run blocks bind(); nothing can be listening on it
    # because systemd runs one instance of the daemon.
    path.unlink()


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc's way of saying bind() failed
        raise ConfigError(f"cannot listen on {address}") from exc


def add_listeners(
    server: grpc.aio.Server,
    plan: Sequence[Listener],
    tls: TlsConfig,
    device: DeviceCertificate | None,
) -> list[BoundListener]:
    """Bind every planned listener on ``server`` (before ``server.start()``)."""
    bound: list[BoundListener] = []
    creds: dict[bool, grpc.ServerCredentials] = {}
    for listener in plan:
        if listener.security in ("tls", "mtls"):
            if device is None:
                raise ConfigError(
                    f"{listener.address} needs TLS but there is no device certificate"
                )
            need_cert = listener.security == "mtls"
            if need_cert not in creds:
                creds[need_cert] = server_credentials(tls, device, require_client_cert=need_cert)
            port = _bind(server, listener.address, creds[need_cert])
        else:
            if listener.security == "unix":
                _prepare_unix_path(Path(listener.address.removeprefix("unix:")))
            port = _bind(server, listener.address, None)
        if listener.security != "unix" and port == 0:
            raise ConfigError(f"cannot listen on {listener.address}")
        bound.append(BoundListener(listener, 0 if listener.security == "unix" else port))
    return bound


def secure_unix_sockets(bound: Sequence[BoundListener], mode: int) -> None:
    """Give bound Unix sockets ``mode`` (call after ``server.start()``)."""
    for item in bound:
        if item.listener.security == "unix":
            path = item.listener.address.removeprefix("unix:")
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, mode)
