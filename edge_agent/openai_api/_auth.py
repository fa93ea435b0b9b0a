"""Who is calling over HTTP: the same Authenticator, roles and rate limiter as gRPC.

HTTP clients prove themselves with ``Authorization: Bearer <token>`` (the tokens of
``[[auth.tokens]]``) or, on loopback, anonymously when ``auth.allow_anonymous_loopback``.
Client certificates are a gRPC matter (uvicorn does not hand the peer certificate to the
application), so the HTTP API serves the client role only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from edge_agent.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from edge_agent.tls import Authenticator, Identity, RateLimiter, role_allows

__all__ = ["HttpAuth", "peer_of"]

_log = logging.getLogger("edge_agent.auth")


def peer_of(scope: Mapping[str, Any]) -> str:
    """The client address in gRPC's peer form (``ipv4:127.0.0.1:5000``), which the
    Authenticator understands; empty when unknown (never loopback then)."""
    client = scope.get("client")
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class HttpAuth:
    """Authenticates, authorizes (client role) and rate-limits one HTTP request."""

    def __init__(
        self, authenticator: Authenticator, limiter: RateLimiter, *, accept_any_token: bool
    ) -> None:
        self._authn = authenticator
        self._limiter = limiter
        self._any_token = accept_any_token

    def admit(self, scope: Mapping[str, Any], authorization: list[str], path: str) -> Identity:
        peer = peer_of(scope)
        metadata = [("authorization", value) for value in authorization]
        try:
            try:
                identity = self._authn.authenticate(peer=peer, auth_context={}, metadata=metadata)
            except Unauthenticated:
                if not self._any_token:
                    raise
                # The open demo: an unknown key counts as none (anonymous on loopback only).
                identity = self._authn.authenticate(peer=peer, auth_context={}, metadata=())
            if identity is None:
                raise Unauthenticated("authentication required (Authorization: Bearer <token>)")
            if not role_allows(identity.role, "client"):
                raise PermissionDenied("the client role is required")
        except (Unauthenticated, PermissionDenied) as exc:
            _log.info("refused HTTP %s: %s", path, exc.message)
            raise
        pushback_ms = self._limiter.check(identity)
        if pushback_ms:
            _log.info("rate limited HTTP %s for %s", path, identity.client_id)
            raise ResourceExhausted("rate limit exceeded; retry later", retry_after_ms=pushback_ms)
        return identity
