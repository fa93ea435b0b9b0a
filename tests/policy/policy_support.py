"""Sample policies shared by the policy tests (the clinic one is the docs/POLICY.md example)."""

from __future__ import annotations

from typing import Any

from edge_agent._proto.edge_agent.v1 import operator_pb2_grpc, policy_pb2
from edge_agent.rpc.policy_api import PolicyApi

CLINIC = """\
version = 3
air_gapped = false
default_data_class = "restricted"
timezone = "Europe/Berlin"

[data_classes]
public = "cloud"
internal = "local"
confidential = "local"
restricted = "local"

[budget]
daily_tokens = 200000
monthly_tokens = 3000000
daily_usd = 2.0
monthly_usd = 30.0

[cloud]
default_model = "meta-llama/Llama-3.3-70B-Instruct"
provider = "together"
allowed_providers = ["together", "nebius"]

[cloud.models."meta-llama/Llama-3.3-70B-Instruct"]
input_usd_per_mtok = 0.88
output_usd_per_mtok = 0.88

[clients."*"]
escalation = false

[clients."faq-kiosk"]
escalation = true
max_cloud_data_class = "public"
budget_share = 0.5

[[escalation_windows]]
days = ["mon", "tue", "wed", "thu", "fri", "sat"]
start = "07:00"
end = "20:00"
"""


def with_version(text: str, version: int) -> str:
    lines = text.splitlines(keepends=True)
    assert lines[0].startswith("version = ")
    return f"version = {version}\n" + "".join(lines[1:])


class PolicyOperator(operator_pb2_grpc.OperatorServicer):
    """Test glue: the lead's OperatorServicer delegates the policy methods the same way."""

    def __init__(self, api: PolicyApi) -> None:
        self._api = api

    async def PushPolicy(self, request: policy_pb2.PushPolicyRequest, context: Any) -> Any:
        return await self._api.PushPolicy(request, context)

    async def PushCredentials(
        self, request: policy_pb2.PushCredentialsRequest, context: Any
    ) -> Any:
        return await self._api.PushCredentials(request, context)

    async def GetDeviceIdentity(
        self, request: policy_pb2.GetDeviceIdentityRequest, context: Any
    ) -> Any:
        return await self._api.GetDeviceIdentity(request, context)
