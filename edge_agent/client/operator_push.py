"""gRPC client for `edge-agent policy push` and `edge-agent credentials push`.

The only module of the policy/credentials area that touches the generated stubs; the CLI
calls these functions with bytes and gets plain values back.
"""

from __future__ import annotations

import grpc

from edge_agent._operator_cli import OperatorTarget
from edge_agent._proto.edge_agent.v1 import operator_pb2_grpc, policy_pb2
from edge_agent.client._operator_channel import (
    open_operator_channel,
    operator_metadata,
    rpc_error,
)
from edge_agent.errors import EdgeAgentError, FailedPrecondition

__all__ = ["OperatorTarget", "get_device_identity", "push_credentials", "push_policy"]


def _call_error(exc: grpc.RpcError) -> EdgeAgentError:
    return rpc_error(exc, refused=FailedPrecondition)


def push_policy(target: OperatorTarget, signed_policy: bytes) -> tuple[int, str]:
    """Push a signed policy; returns (policy version, signer key id) as the box accepted it."""
    with open_operator_channel(target) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        try:
            resp = stub.PushPolicy(
                policy_pb2.PushPolicyRequest(signed_policy=signed_policy),
                timeout=target.timeout_s,
                metadata=operator_metadata(target),
            )
        except grpc.RpcError as exc:
            raise _call_error(exc) from exc
    return resp.policy_version, resp.signer_key_id


def push_credentials(target: OperatorTarget, sealed_envelope: bytes) -> tuple[str, str]:
    """Push a sealed envelope; returns (expires_at, signer key id)."""
    with open_operator_channel(target) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        try:
            resp = stub.PushCredentials(
                policy_pb2.PushCredentialsRequest(sealed_envelope=sealed_envelope),
                timeout=target.timeout_s,
                metadata=operator_metadata(target),
            )
        except grpc.RpcError as exc:
            raise _call_error(exc) from exc
    return resp.expires_at, resp.signer_key_id


def get_device_identity(target: OperatorTarget) -> tuple[str, str]:
    """(device id, public key PEM) of the box, to seal credentials to it."""
    with open_operator_channel(target) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        try:
            resp = stub.GetDeviceIdentity(
                policy_pb2.GetDeviceIdentityRequest(),
                timeout=target.timeout_s,
                metadata=operator_metadata(target),
            )
        except grpc.RpcError as exc:
            raise _call_error(exc) from exc
    return resp.device_id, resp.public_key_pem
