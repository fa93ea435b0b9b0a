"""Per-client bearer tokens: 256 random bits, stored on the box only as SHA-256 digests.

A fast hash is right here: the token carries 256 bits of entropy, so there is nothing to
brute-force, and a slow KDF (scrypt) would cost milliseconds on every call.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from edge_agent.errors import Unauthenticated
from edge_agent.tls._config import TokenEntry
from edge_agent.tls._identity import Identity

__all__ = ["TOKEN_PREFIX", "NewToken", "TokenStore", "hash_token", "new_token"]

TOKEN_PREFIX = "eat_"  # noqa: S105 - a public marker, makes leaked tokens greppable
_MAX_LEN = 256


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly minted token; ``token`` is shown to the operator once and never stored."""

    token: str
    sha256: str

    def __repr__(self) -> str:
        return f"NewToken(sha256={self.sha256!r}, token=<hidden>)"

    def config_entry(self, name: str, role: str) -> str:
        return f'[[auth.tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{self.sha256}"\n'


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> NewToken:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return NewToken(token=token, sha256=hash_token(token))


class TokenStore:
    """Checks presented tokens against the configured digests in constant time."""

    def __init__(self, entries: tuple[TokenEntry, ...]) -> None:
        self._entries = tuple((bytes.fromhex(e.sha256), e) for e in entries)

    def __repr__(self) -> str:
        return f"TokenStore({len(self._entries)} tokens)"

    def identify(self, token: str) -> Identity:
        if not token or len(token) > _MAX_LEN or not token.isascii():
            raise Unauthenticated("invalid bearer token")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        found: TokenEntry | None = None
        # Compare against every entry so the time taken does not tell which one matched.
        for stored, entry in self._entries:
            if hmac.compare_digest(stored, digest):
                found = entry
        if found is None:
            raise Unauthenticated("invalid bearer token")
        return Identity(name=found.name, role=found.role, method="token")
