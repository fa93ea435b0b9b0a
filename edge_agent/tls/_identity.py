"""Who is calling: the identity the auth interceptor proved, visible to servicers."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Literal

__all__ = ["ROLES", "AuthMethod", "Identity", "Role", "current_identity", "role_allows"]

Role = Literal["client", "operator", "admin"]
AuthMethod = Literal["cert", "token", "unix", "loopback-anonymous"]

ROLES: tuple[Role, ...] = ("client", "operator", "admin")

# A role includes the rights of the roles before it: an operator may also chat, and the
# box's own administrator (Unix socket) has operator rights.
_RANK: dict[str, int] = {"client": 0, "operator": 1, "admin": 2}


def role_allows(granted: Role, required: Role) -> bool:
    """Whether an identity with role ``granted`` may call a method that needs ``required``."""
    return _RANK[granted] >= _RANK[required]


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller.

    ``name`` is the certificate's common name, the token's configured name, ``local-admin``
    for the Unix socket, or ``loopback`` for anonymous loopback callers; it is safe to log.
    """

    name: str
    role: Role
    method: AuthMethod

    @property
    def client_id(self) -> str:
        """A stable key for audit records and per-client rate limits."""
        return f"{self.method}:{self.name}"


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "edge_agent_identity", default=None
)


def current_identity() -> Identity | None:
    """The identity of the call being served, or None outside an authenticated call."""
    return _current.get()


def _set_identity(identity: Identity | None) -> contextvars.Token[Identity | None]:
    return _current.set(identity)


def _reset_identity(token: contextvars.Token[Identity | None]) -> None:
    _current.reset(token)
