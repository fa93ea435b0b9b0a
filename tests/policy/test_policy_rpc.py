"""PolicyApi behind a real grpc.aio server on port 0, driven by the real operator push client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from grpc import aio
from policy_helpers import FleetKey
from policy_support import CLINIC, PolicyOperator, with_version

from edge_agent._fleetkeys import FleetKeyring
from edge_agent._operator_cli import OperatorTarget
from edge_agent._proto.edge_agent.v1 import operator_pb2_grpc
from edge_agent.client.operator_push import get_device_identity, push_credentials, push_policy
from edge_agent.credentials import (
    CredentialsConfig,
    CredentialStore,
    DeviceIdentity,
    SecretToken,
    seal_credential,
)
from edge_agent.errors import FailedPrecondition
from edge_agent.policy import PolicyStore, sign_policy
from edge_agent.rpc.interceptors import ErrorInterceptor
from edge_agent.rpc.policy_api import PolicyApi


@dataclass
class Box:
    target: OperatorTarget
    policies: PolicyStore
    credentials: CredentialStore
    identity: DeviceIdentity
    installed: list[str]


@pytest.fixture
async def box(
    cred_config: CredentialsConfig, keyring: FleetKeyring, state_dir: Path
) -> AsyncIterator[Box]:
    identity = DeviceIdentity.load_or_create(cred_config.device_key)
    policies = PolicyStore(state_dir / "policy" / "policy.signed", keyring)
    credentials = CredentialStore(cred_config, identity, keyring)
    installed: list[str] = []
    api = PolicyApi(
        policies,
        credentials,
        tls_fingerprint=lambda: "ab" * 32,
        on_policy=lambda doc: installed.append(f"policy {doc.version}"),
        on_credentials=lambda info: installed.append(f"credential {info.envelope_id}"),
    )
    server = aio.server(interceptors=[ErrorInterceptor()])
    operator_pb2_grpc.add_OperatorServicer_to_server(PolicyOperator(api), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        target = OperatorTarget(f"127.0.0.1:{port}", insecure=True, timeout_s=10)
        yield Box(target, policies, credentials, identity, installed)
    finally:
        await server.stop(None)


def _seal_for(identity: DeviceIdentity, fleet: FleetKey, hours: float = 24) -> bytes:
    return seal_credential(
        SecretToken("hf_rpcTestToken0123456789abcdefXYZ"),
        device_public_key=identity.public_key,
        fleet_key=fleet.private,
        expires_at=datetime.now(UTC) + timedelta(hours=hours),
        allowed_models=["meta-llama/Llama-3.3-70B-Instruct"],
    )


async def test_device_identity(box: Box) -> None:
    device_id, pem = await asyncio.to_thread(get_device_identity, box.target)
    assert device_id == box.identity.device_id
    assert pem == box.identity.public_key_pem()


async def test_push_policy_and_refusals(box: Box, fleet: FleetKey, rogue: FleetKey) -> None:
    v4 = sign_policy(with_version(CLINIC, 4), fleet.private)
    version, signer = await asyncio.to_thread(push_policy, box.target, v4)
    assert version == 4
    assert signer == FleetKeyring([fleet.private.public_key()]).key_ids[0]
    assert box.installed == ["policy 4"]
    with pytest.raises(FailedPrecondition, match="older than the installed version 4"):
        await asyncio.to_thread(
            push_policy, box.target, sign_policy(with_version(CLINIC, 3), fleet.private)
        )
    with pytest.raises(FailedPrecondition, match="unknown key"):
        await asyncio.to_thread(push_policy, box.target, sign_policy(CLINIC, rogue.private))
    with pytest.raises(FailedPrecondition, match="unsigned"):
        await asyncio.to_thread(push_policy, box.target, CLINIC.encode())
    with pytest.raises(FailedPrecondition, match="signed_policy: is empty"):
        await asyncio.to_thread(push_policy, box.target, b"")
    current = box.policies.current()
    assert current is not None
    assert current.version == 4
    assert box.installed == ["policy 4"]


async def test_push_credentials_and_refusals(
    box: Box, fleet: FleetKey, rogue: FleetKey, tmp_path: Path
) -> None:
    expires, signer = await asyncio.to_thread(
        push_credentials, box.target, _seal_for(box.identity, fleet)
    )
    assert datetime.fromisoformat(expires) > datetime.now(UTC)
    assert len(signer) == 64
    assert box.credentials.token_provider()() == "hf_rpcTestToken0123456789abcdefXYZ"
    other = DeviceIdentity.load_or_create(tmp_path / "other.pem")
    with pytest.raises(FailedPrecondition, match="another device"):
        await asyncio.to_thread(push_credentials, box.target, _seal_for(other, fleet))
    with pytest.raises(FailedPrecondition, match="unknown key"):
        await asyncio.to_thread(push_credentials, box.target, _seal_for(box.identity, rogue))
    assert len(box.installed) == 1
