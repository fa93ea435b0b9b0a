"""The Operator servicer: one gRPC service, two translation halves (bundles, policy)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from edge_agent._proto.edge_agent.v1 import bundles_pb2, operator_pb2_grpc, policy_pb2
from edge_agent.rpc.bundles_api import BundlesApi
from edge_agent.rpc.policy_api import PolicyApi

__all__ = ["OperatorApi"]


class OperatorApi(operator_pb2_grpc.OperatorServicer):
    def __init__(self, bundles: BundlesApi, policy: PolicyApi) -> None:
        self._bundles = bundles
        self._policy = policy

    async def PushBundle(
        self, request_iterator: AsyncIterator[bundles_pb2.PushBundleRequest], context: Any
    ) -> bundles_pb2.PushBundleResponse:
        return await self._bundles.PushBundle(request_iterator, context)

    async def GetUploadOffset(
        self, request: bundles_pb2.GetUploadOffsetRequest, context: Any
    ) -> bundles_pb2.GetUploadOffsetResponse:
        return await self._bundles.GetUploadOffset(request, context)

    async def ListBundles(
        self, request: bundles_pb2.ListBundlesRequest, context: Any
    ) -> bundles_pb2.ListBundlesResponse:
        return await self._bundles.ListBundles(request, context)

    async def RollbackBundle(
        self, request: bundles_pb2.RollbackBundleRequest, context: Any
    ) -> bundles_pb2.RollbackBundleResponse:
        return await self._bundles.RollbackBundle(request, context)

    async def PushPolicy(
        self, request: policy_pb2.PushPolicyRequest, context: Any
    ) -> policy_pb2.PushPolicyResponse:
        return await self._policy.PushPolicy(request, context)

    async def PushCredentials(
        self, request: policy_pb2.PushCredentialsRequest, context: Any
    ) -> policy_pb2.PushCredentialsResponse:
        return await self._policy.PushCredentials(request, context)

    async def GetDeviceIdentity(
        self, request: policy_pb2.GetDeviceIdentityRequest, context: Any
    ) -> policy_pb2.GetDeviceIdentityResponse:
        return await self._policy.GetDeviceIdentity(request, context)
