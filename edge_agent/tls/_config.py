"""The ``[tls]`` and ``[auth]`` config sections.

Paths are relative to the state directory unless absolute, so a test or the demo can run the
whole box from a temp dir. Tokens are configured as SHA-256 hashes only: the plaintext token
is printed once by ``edge-agent tls add-token`` and never stored on the box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent._tomlreader import TableReader
from edge_agent.tls._identity import Role

__all__ = [
    "AuthConfig",
    "RateLimit",
    "TlsConfig",
    "TokenEntry",
    "parse_auth_config",
    "parse_tls_config",
]

DEFAULT_ADMIN_SOCKET = Path("/run/edge-agent/admin.sock")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Transport settings: the device certificate, trusted client CAs and listeners."""

    cert_file: Path
    key_file: Path
    # CAs whose client certificates the box accepts (operator-held CA, see SECURITY.md).
    client_ca_files: tuple[Path, ...] = ()
    # Port of the mTLS listener beside each LAN address (client certificate required);
    # only bound when client_ca_files is set. 0 picks a free port (tests).
    mtls_port: int = 50052
    # True: the main TLS port requires client certificates too (then no separate mTLS port).
    require_client_cert: bool = False
    # Plaintext on non-loopback addresses; never the default.
    allow_plaintext: bool = False
    # Extra subject alternative names (DNS names or IP addresses) for the device certificate.
    addresses: tuple[str, ...] = ()
    # Overrides socket.gethostname() in the certificate (tests, renamed boxes).
    hostname: str | None = None
    validity_days: int = 825
    renew_before_days: int = 30
    admin_socket_enabled: bool = True
    admin_socket: Path = DEFAULT_ADMIN_SOCKET
    admin_socket_mode: int = 0o660


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One per-client bearer token, stored as the SHA-256 hex digest of the token."""

    name: str
    role: Role
    sha256: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``requests_per_s`` sustained, ``burst`` at once; 0 means unlimited."""

    requests_per_s: float
    burst: int

    @property
    def unlimited(self) -> bool:
        return self.requests_per_s <= 0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who may call: tokens, anonymous loopback, per-role rate limits, revoked certificates."""

    # Loopback is no trust boundary on a shared box: every local user reaches it. The demo
    # (default_config) opens it; an installed box wants a token or the admin socket.
    allow_anonymous_loopback: bool = False
    # Operator rights normally need mTLS; tokens with role operator only when this is true.
    allow_operator_tokens: bool = False
    tokens: tuple[TokenEntry, ...] = ()
    # Serial numbers (hex, no colons) of client certificates that are no longer accepted.
    revoked_cert_serials: frozenset[int] = frozenset()
    client_rate: RateLimit = RateLimit(requests_per_s=20.0, burst=40)
    operator_rate: RateLimit = RateLimit(requests_per_s=5.0, burst=20)
    admin_rate: RateLimit = RateLimit(requests_per_s=0.0, burst=0)

    def rate_for(self, role: Role) -> RateLimit:
        if role == "client":
            return self.client_rate
        if role == "operator":
            return self.operator_rate
        return self.admin_rate


def parse_tls_config(reader: TableReader, *, state_dir: Path) -> TlsConfig:
    """Parse ``[tls]``; relative paths resolve against ``state_dir``."""
    cert_file = reader.path("cert_file", state_dir / "tls" / "device.pem", base=state_dir)
    key_file = reader.path("key_file", state_dir / "tls" / "device.key", base=state_dir)
    ca_files = tuple(_resolve(state_dir, raw) for raw in reader.string_list("client_ca_files", ()))
    hostname = reader.optional_string("hostname")
    if hostname is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", hostname):
        raise reader.error("hostname", "must be a DNS host name")
    validity = reader.integer("validity_days", 825, min_value=2, max_value=3650)
    renew = reader.integer("renew_before_days", 30, min_value=1, max_value=validity - 1)
    config = TlsConfig(
        cert_file=cert_file,
        key_file=key_file,
        client_ca_files=ca_files,
        mtls_port=reader.integer("mtls_port", 50052, min_value=0, max_value=65535),
        require_client_cert=reader.boolean("require_client_cert", False),
        allow_plaintext=reader.boolean("allow_plaintext", False),
        addresses=reader.string_list("addresses", ()),
        hostname=hostname,
        validity_days=validity,
        renew_before_days=renew,
        admin_socket_enabled=reader.boolean("admin_socket_enabled", True),
        admin_socket=reader.path("admin_socket", DEFAULT_ADMIN_SOCKET, base=state_dir),
        admin_socket_mode=reader.integer("admin_socket_mode", 0o660, min_value=0, max_value=0o777),
    )
    reader.finish()
    return config


def parse_auth_config(reader: TableReader) -> AuthConfig:
    """Parse ``[auth]`` including ``[[auth.tokens]]`` and ``[auth.rate_limits.<role>]``."""
    allow_operator_tokens = reader.boolean("allow_operator_tokens", False)
    tokens = _parse_tokens(reader, allow_operator_tokens)
    serials: set[int] = set()
    for raw in reader.string_list("revoked_cert_serials", ()):
        try:
            serials.add(int(raw.replace(":", ""), 16))
        except ValueError:
            raise reader.error("revoked_cert_serials", f"not a hex serial: {raw!r}") from None
    defaults = AuthConfig()
    limits = reader.table("rate_limits")
    rates = {
        role: _parse_rate(limits.table(role), default)
        for role, default in (
            ("client", defaults.client_rate),
            ("operator", defaults.operator_rate),
            ("admin", defaults.admin_rate),
        )
    }
    limits.finish()
    config = AuthConfig(
        allow_anonymous_loopback=reader.boolean("allow_anonymous_loopback", False),
        allow_operator_tokens=allow_operator_tokens,
        tokens=tokens,
        revoked_cert_serials=frozenset(serials),
        client_rate=rates["client"],
        operator_rate=rates["operator"],
        admin_rate=rates["admin"],
    )
    reader.finish()
    return config


def _resolve(base: Path, raw: str) -> Path:
    p = Path(raw).expanduser()
    return p if p.is_absolute() else base / p


def _parse_rate(reader: TableReader, default: RateLimit) -> RateLimit:
    rate = reader.number("requests_per_s", default.requests_per_s, min_value=0.0)
    burst = reader.integer("burst", default.burst, min_value=0, max_value=1_000_000)
    if rate > 0 and burst < 1:
        raise reader.error("burst", "must be >= 1 when requests_per_s > 0")
    reader.finish()
    return RateLimit(requests_per_s=rate, burst=burst)


def _parse_tokens(reader: TableReader, allow_operator_tokens: bool) -> tuple[TokenEntry, ...]:
    raw = reader.raw("tokens", [])
    if not isinstance(raw, list):
        raise reader.error("tokens", "expected an array of tables ([[auth.tokens]])")
    entries: list[TokenEntry] = []
    names: set[str] = set()
    hashes: set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise reader.error("tokens", "expected an array of tables ([[auth.tokens]])")
        sub = TableReader(item, source=reader.source, prefix=f"{reader.key('tokens')}[{index}].")
        name = sub.string("name", "")
        if not _NAME.fullmatch(name):
            raise sub.error("name", "must be 1-64 of letters, digits, '.', '_', '@', '-'")
        if name in names:
            raise sub.error("name", f"duplicate token name {name!r}")
        role = sub.string("role", "client", choices=("client", "operator"))
        if role == "operator" and not allow_operator_tokens:
            raise sub.error(
                "role", "operator tokens need auth.allow_operator_tokens = true (prefer mTLS)"
            )
        digest = sub.string("sha256", "").lower()
        if not _HEX64.fullmatch(digest):
            raise sub.error("sha256", "must be 64 hex digits (edge-agent tls add-token)")
        if digest in hashes:
            raise sub.error("sha256", "the same token is configured twice")
        sub.finish()
        names.add(name)
        hashes.add(digest)
        entries.append(
            TokenEntry(
                name=name, role="operator" if role == "operator" else "client", sha256=digest
            )
        )
    return tuple(entries)
