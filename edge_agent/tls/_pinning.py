"""Client side: trust a box by its pinned certificate fingerprint (from mDNS or the operator).

The certificate is fetched with a raw TLS handshake, its SHA-256 compared with the pin, and
gRPC is then given exactly that certificate as its only root. A man in the middle would
need the box's private key to pass gRPC's own handshake, so the fetch-then-connect gap does
not weaken the pin.
"""

from __future__ import annotations

import hmac
import socket
import ssl
from typing import NamedTuple

import grpc
from cryptography import x509

from edge_agent.errors import InvalidArgument, PermissionDenied, Unavailable
from edge_agent.tls._device import certificate_fingerprint, normalize_fingerprint

__all__ = ["PinnedCredentials", "fetch_server_certificate", "pinned_channel_credentials"]


class PinnedCredentials(NamedTuple):
    credentials: grpc.ChannelCredentials
    options: list[tuple[str, str]]
    certificate_pem: bytes


def fetch_server_certificate(host: str, port: int, *, timeout_s: float = 5.0) -> bytes:
    """The server's leaf certificate (PEM), without trusting it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust comes from the pin, checked next
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])  # gRPC servers refuse handshakes without h2
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as sock,
            ctx.wrap_socket(sock, server_hostname=None) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"cannot reach {host}:{port} over TLS") from exc
    if not der:
        raise Unavailable(f"{host}:{port} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode("ascii")


def pinned_channel_credentials(
    host: str,
    port: int,
    fingerprint: str,
    *,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    timeout_s: float = 5.0,
) -> PinnedCredentials:
    """Channel credentials that trust only the certificate whose SHA-256 is ``fingerprint``.

    Raises :class:`PermissionDenied` when the box presents another certificate. Use the
    returned ``options`` with the channel: they set ``grpc.ssl_target_name_override`` to a
    name in the pinned certificate, so connecting by IP address works.
    """
    try:
        pin = normalize_fingerprint(fingerprint)
    except ValueError as exc:
        raise InvalidArgument("fingerprint", str(exc)) from exc
    pem = fetch_server_certificate(host, port, timeout_s=timeout_s)
    if not hmac.compare_digest(certificate_fingerprint(pem), pin):
        raise PermissionDenied(
            f"{host}:{port} presented a certificate that does not match the pinned fingerprint"
        )
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    options: list[tuple[str, str]] = []
    if names:
        options.append(("grpc.ssl_target_name_override", names[0]))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pem,
        private_key=client_key_pem,
        certificate_chain=client_cert_pem,
    )
    return PinnedCredentials(credentials, options, pem)
