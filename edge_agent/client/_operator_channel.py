"""The operator tools' connection to a box: channel, credentials, metadata, error mapping.

Shared by `bundle push|list|rollback`, `policy push` and `credentials push`.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from edge_agent._operator_cli import OperatorTarget
from edge_agent.errors import (
    ConfigError,
    EdgeAgentError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = ["open_operator_channel", "operator_metadata", "rpc_error"]

_CODES: dict[grpc.StatusCode, type[EdgeAgentError]] = {
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.NOT_FOUND: NotFound,
}


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path.name}: cannot be read ({exc.strerror})") from exc


def open_operator_channel(target: OperatorTarget) -> grpc.Channel:
    if target.insecure:
        return grpc.insecure_channel(target.address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(target.ca_cert, "CA certificate"),
        private_key=_read(target.client_key, "client key"),
        certificate_chain=_read(target.client_cert, "client certificate"),
    )
    return grpc.secure_channel(target.address, creds)


def operator_metadata(target: OperatorTarget) -> tuple[tuple[str, str], ...]:
    raw = _read(target.operator_token_file, "operator token file")
    return (("authorization", "Bearer " + raw.decode().strip()),) if raw else ()


def rpc_error(
    exc: grpc.RpcError,
    *,
    refused: type[EdgeAgentError],
    invalid_field: str | None = None,
) -> EdgeAgentError:
    """Our error for a failed call: ``refused`` for FAILED_PRECONDITION (a refused document),
    InvalidArgument naming ``invalid_field`` when given (else ``refused``), and the
    transport-level codes as themselves; anything else is Unavailable."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = ((exc.details() if isinstance(exc, grpc.Call) else None) or "")[:500]
    if code == grpc.StatusCode.INVALID_ARGUMENT and invalid_field is not None:
        return InvalidArgument(invalid_field, details)
    text = f"the box answered {code.name}: {details}"
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
        return refused(text)
    return _CODES.get(code, Unavailable)(text)
