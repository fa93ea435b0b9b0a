"""gRPC client for `edge-agent policy push` and `edge-agent credentials push`.

The only module of the policy/credentials area that touches the generated stubs; the CLI
calls these functions with bytes and gets plain values back.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from edge_agent._operator_cli import OperatorTarget
from edge_agent._proto.edge_agent.v1 import operator_pb2_grpc, policy_pb2
from edge_agent.errors import (
    ConfigError,
    EdgeAgentError,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

__all__ = ["OperatorTarget", "get_device_identity", "push_credentials", "push_policy"]


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path.name}: cannot be read ({exc.strerror})") from exc


def _channel(target: OperatorTarget) -> grpc.Channel:
    if target.insecure:
        return grpc.insecure_channel(target.address)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(target.ca_cert, "CA certificate"),
        private_key=_read(target.client_key, "client key"),
        certificate_chain=_read(target.client_cert, "client certificate"),
    )
    return grpc.secure_channel(target.address, creds)


def _metadata(target: OperatorTarget) -> tuple[tuple[str, str], ...]:
    raw = _read(target.operator_token_file, "operator token file")
    if raw is None:
        return ()
    return (("authorization", "Bearer " + raw.decode().strip()),)


def _call_error(exc: grpc.RpcError) -> EdgeAgentError:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or ""
    text = f"the box answered {code.name}: {details[:300]}"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(text)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(text)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
        return FailedPrecondition(text)
    return Unavailable(text)


def push_policy(target: OperatorTarget, signed_policy: bytes) -> tuple[int, str]:
    """Push a signed policy; returns (policy version, signer key id) as the box accepted it."""
    with _channel(target) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        try:
            resp = stub.PushPolicy(
                policy_pb2.PushPolicyRequest(signed_policy=signed_policy),
                timeout=target.timeout_s,
                metadata=_metadata(target),
            )
        except grpc.RpcError as exc:
            raise _call_error(exc) from exc
    return resp.policy_version, resp.signer_key_id


def push_credentials(target: OperatorTarget, sealed_envelope: bytes) -> tuple[str, str]:
    """Push a sealed envelope; returns (expires_at, signer key id)."""
    with _channel(target) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        try:
            resp = stub.PushCredentials(
                policy_pb2.PushCredentialsRequest(sealed_envelope=sealed_envelope),
                timeout=target.timeout_s,
                metadata=_metadata(target),
            )
        except grpc.RpcError as exc:
            raise _call_error(exc) from exc
    return resp.expires_at, resp.signer_key_id


def get_device_identity(target: OperatorTarget) -> tuple[str, str]:
    """(device id, public key PEM) of the box, to seal credentials to it."""
    with _channel(target) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        try:
            resp = stub.GetDeviceIdentity(
                policy_pb2.GetDeviceIdentityRequest(),
                timeout=target.timeout_s,
                metadata=_metadata(target),
            )
        except grpc.RpcError as exc:
            raise _call_error(exc) from exc
    return resp.device_id, resp.public_key_pem
