"""Operator RPCs for signed policy, sealed credentials and device identity: translation only.

Domain errors (PolicyError, CredentialError, InvalidArgument) propagate to the server's
ErrorInterceptor, which turns them into FAILED_PRECONDITION / INVALID_ARGUMENT statuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from edge_agent._proto.edge_agent.v1 import policy_pb2
from edge_agent.credentials import CredentialStore, EnvelopeInfo
from edge_agent.errors import InvalidArgument
from edge_agent.policy import PolicyDocument, PolicyStore

__all__ = ["PolicyApi"]


class PolicyApi:
    """The policy/credentials half of the Operator service; the OperatorServicer delegates here.

    ``on_policy`` / ``on_credentials`` tell the app to recompute the effective policy after
    a successful install; ``tls_fingerprint`` returns the server certificate's SHA-256.
    """

    def __init__(
        self,
        policies: PolicyStore,
        credentials: CredentialStore,
        *,
        tls_fingerprint: Callable[[], str] | None = None,
        on_policy: Callable[[PolicyDocument], None] | None = None,
        on_credentials: Callable[[EnvelopeInfo], None] | None = None,
    ) -> None:
        self._policies = policies
        self._credentials = credentials
        self._tls_fingerprint = tls_fingerprint
        self._on_policy = on_policy
        self._on_credentials = on_credentials

    async def PushPolicy(
        self, request: policy_pb2.PushPolicyRequest, context: Any
    ) -> policy_pb2.PushPolicyResponse:
        if not request.signed_policy:
            raise InvalidArgument("signed_policy", "is empty")
        # install() verifies and fsyncs: keep it off the event loop.
        doc = await asyncio.to_thread(self._policies.install, request.signed_policy)
        if self._on_policy is not None:
            self._on_policy(doc)
        return policy_pb2.PushPolicyResponse(
            policy_version=doc.version, signer_key_id=doc.signer_key_id
        )

    async def PushCredentials(
        self, request: policy_pb2.PushCredentialsRequest, context: Any
    ) -> policy_pb2.PushCredentialsResponse:
        if not request.sealed_envelope:
            raise InvalidArgument("sealed_envelope", "is empty")
        info = await asyncio.to_thread(self._credentials.install, request.sealed_envelope)
        if self._on_credentials is not None:
            self._on_credentials(info)
        return policy_pb2.PushCredentialsResponse(
            expires_at=info.expires_at.isoformat(), signer_key_id=info.signer_key_id
        )

    async def GetDeviceIdentity(
        self, request: policy_pb2.GetDeviceIdentityRequest, context: Any
    ) -> policy_pb2.GetDeviceIdentityResponse:
        identity = self._credentials.identity
        return policy_pb2.GetDeviceIdentityResponse(
            device_id=identity.device_id,
            public_key_pem=identity.public_key_pem(),
            tls_fingerprint_sha256=self._tls_fingerprint() if self._tls_fingerprint else "",
        )
