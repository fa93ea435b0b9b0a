"""Transport security: the device certificate, client CAs and tokens, listeners, pinning.

The gRPC interceptor that uses these lives in :mod:`edge_agent.rpc.auth`; this package has
no servicer code.
"""

from edge_agent.tls._authn import Authenticator, bearer_token, peer_is_loopback, peer_is_unix
from edge_agent.tls._ca import (
    ROLE_URI_PREFIX,
    CertificateAuthority,
    ClientCertVerifier,
    IssuedCertificate,
    init_ca,
    issue_client_certificate,
    load_ca,
)
from edge_agent.tls._cli import add_tls_commands
from edge_agent.tls._config import (
    DEFAULT_ADMIN_SOCKET,
    AuthConfig,
    RateLimit,
    TlsConfig,
    TokenEntry,
    parse_auth_config,
    parse_tls_config,
)
from edge_agent.tls._device import (
    DeviceCertificate,
    certificate_fingerprint,
    ensure_device_certificate,
    format_fingerprint,
    normalize_fingerprint,
)
from edge_agent.tls._identity import (
    ROLES,
    AuthMethod,
    Identity,
    Role,
    current_identity,
    role_allows,
)
from edge_agent.tls._listen import (
    BoundListener,
    Listener,
    add_listeners,
    is_loopback_address,
    listen_plan,
    secure_unix_sockets,
    server_credentials,
)
from edge_agent.tls._pinning import (
    PinnedCredentials,
    fetch_server_certificate,
    pinned_channel_credentials,
)
from edge_agent.tls._ratelimit import RateLimiter
from edge_agent.tls._tokens import NewToken, TokenStore, hash_token, new_token

__all__ = [
    "DEFAULT_ADMIN_SOCKET",
    "ROLES",
    "ROLE_URI_PREFIX",
    "AuthConfig",
    "AuthMethod",
    "Authenticator",
    "BoundListener",
    "CertificateAuthority",
    "ClientCertVerifier",
    "DeviceCertificate",
    "Identity",
    "IssuedCertificate",
    "Listener",
    "NewToken",
    "PinnedCredentials",
    "RateLimit",
    "RateLimiter",
    "Role",
    "TlsConfig",
    "TokenEntry",
    "TokenStore",
    "add_listeners",
    "add_tls_commands",
    "bearer_token",
    "certificate_fingerprint",
    "current_identity",
    "ensure_device_certificate",
    "fetch_server_certificate",
    "format_fingerprint",
    "hash_token",
    "init_ca",
    "is_loopback_address",
    "issue_client_certificate",
    "listen_plan",
    "load_ca",
    "new_token",
    "normalize_fingerprint",
    "parse_auth_config",
    "parse_tls_config",
    "peer_is_loopback",
    "peer_is_unix",
    "pinned_channel_credentials",
    "role_allows",
    "secure_unix_sockets",
    "server_credentials",
]
