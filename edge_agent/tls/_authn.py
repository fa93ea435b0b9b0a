"""Turns what a connection proves (peer address, TLS client certificate, bearer token)
into an :class:`Identity`. Pure logic, no gRPC types, so it is testable on its own."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from edge_agent.errors import Unauthenticated
from edge_agent.tls._ca import ClientCertVerifier
from edge_agent.tls._config import AuthConfig, TlsConfig
from edge_agent.tls._identity import Identity
from edge_agent.tls._tokens import TokenStore

__all__ = ["Authenticator", "bearer_token", "peer_is_loopback", "peer_is_unix"]

ADMIN = Identity(name="local-admin", role="admin", method="unix")
LOOPBACK_ANONYMOUS = Identity(name="loopback", role="client", method="loopback-anonymous")


def peer_is_unix(peer: str) -> bool:
    return peer.startswith("unix:") or peer.startswith("unix-abstract:")


def peer_is_loopback(peer: str) -> bool:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` (gRPC's peer strings) → True."""
    if peer.startswith("ipv4:"):
        host = peer[5:].rsplit(":", 1)[0]
    elif peer.startswith("ipv6:"):
        host = peer[5:].rsplit(":", 1)[0].strip("[]")
        host = host.split("%", 1)[0]
    else:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header; None when absent."""
    values = [v for k, v in metadata if k.lower() == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated("more than one authorization header")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization must be 'Bearer <token>'")
    return token.strip()


class Authenticator:
    """Decides who a caller is. Order: Unix socket, client certificate, token, loopback."""

    def __init__(self, auth: AuthConfig, verifier: ClientCertVerifier) -> None:
        self._auth = auth
        self._verifier = verifier
        self._tokens = TokenStore(auth.tokens)

    @classmethod
    def from_config(cls, tls: TlsConfig, auth: AuthConfig) -> Authenticator:
        verifier = ClientCertVerifier.from_files(
            tls.client_ca_files, revoked_serials=auth.revoked_cert_serials
        )
        return cls(auth, verifier)

    def authenticate(
        self,
        *,
        peer: str,
        auth_context: Mapping[str, Iterable[bytes]],
        metadata: Iterable[tuple[str, str | bytes]],
    ) -> Identity | None:
        """The caller's identity; None when it presented nothing (anonymous).

        Presented but invalid credentials raise :class:`Unauthenticated` (or
        ``PermissionDenied`` for a trusted certificate without a role): a bad credential is
        never silently downgraded to anonymous.
        """
        if peer_is_unix(peer):
            # Reaching the socket is the proof: its file mode and group guard it.
            return ADMIN
        token = bearer_token(metadata)
        certs = list(auth_context.get("x509_pem_cert") or ())
        identity: Identity | None = None
        if certs:
            chain = b"".join(auth_context.get("x509_pem_cert_chain") or ())
            identity = self._verifier.identify(certs[0], chain)
        if token is not None:
            from_token = self._tokens.identify(token)
            identity = identity or from_token
        if identity is not None:
            return identity
        if self._auth.allow_anonymous_loopback and peer_is_loopback(peer):
            return LOOPBACK_ANONYMOUS
        return None
