"""TUF/Uptane-style attacks on what the fleet signs, over the admin socket of a real daemon
(gaps left by tests/bundles and tests/policy; docs/THREAT_MODEL.md maps the rest)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from daemon_harness import RunningAgent, start_agent, stop_agent
from hostile_cloud import POLICY, TOKEN, escalating_config
from hostile_common import admin_target

from edge_agent._proto.edge_agent.v1 import operator_pb2_grpc, policy_pb2
from edge_agent.credentials import SecretToken, seal_credential
from edge_agent.policy import sign_policy

FLEET = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    tmp = tmp_path_factory.mktemp("attacks")
    # The router is never reached here: a closed loopback port is enough.
    running, thread = start_agent(escalating_config(tmp, "http://127.0.0.1:9/v1", FLEET))
    yield running
    stop_agent(running, thread)


@pytest.fixture
def operator(box: RunningAgent) -> Iterator[operator_pb2_grpc.OperatorStub]:
    with grpc.insecure_channel(admin_target(box)) as ch:
        yield operator_pb2_grpc.OperatorStub(ch)


def _envelope(box: RunningAgent, issued: datetime) -> bytes:
    return seal_credential(
        SecretToken(TOKEN),
        device_public_key=box.agent.credentials.identity.public_key,
        fleet_key=FLEET,
        expires_at=issued + timedelta(days=2),
        allowed_models=["org/big-model"],
        now=issued,
    )


def test_a_document_of_one_kind_is_refused_as_another(
    box: RunningAgent, operator: operator_pb2_grpc.OperatorStub
) -> None:
    # Mix-and-match across kinds: every blob carries a valid fleet signature, for its own kind.
    policy = sign_policy(POLICY.replace("version = 1", "version = 5"), FLEET)
    envelope = _envelope(box, datetime.now(UTC))
    with pytest.raises(grpc.RpcError) as info:
        operator.PushCredentials(
            policy_pb2.PushCredentialsRequest(sealed_envelope=policy), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        operator.PushPolicy(policy_pb2.PushPolicyRequest(signed_policy=envelope), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    current = box.agent.policies.current()
    assert current is not None and current.version == 1  # the last good policy stands


def test_a_signature_replayed_over_another_text_is_refused(
    box: RunningAgent, operator: operator_pb2_grpc.OperatorStub
) -> None:
    # Same version, a loosened text, the genuine signature of the original: refused whole.
    document = json.loads(sign_policy(POLICY, FLEET))
    loosened = POLICY.replace('internal = "local"', 'internal = "cloud"')
    document["payload"] = base64.b64encode(loosened.encode()).decode()
    with pytest.raises(grpc.RpcError) as info:
        operator.PushPolicy(
            policy_pb2.PushPolicyRequest(signed_policy=json.dumps(document).encode()), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    current = box.agent.policies.current()
    assert current is not None and 'internal = "local"' in current.text


def test_an_older_envelope_does_not_replace_a_newer_one(
    box: RunningAgent, operator: operator_pb2_grpc.OperatorStub
) -> None:
    now = datetime.now(UTC)
    newer, older = _envelope(box, now), _envelope(box, now - timedelta(hours=1))
    operator.PushCredentials(policy_pb2.PushCredentialsRequest(sealed_envelope=newer), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        operator.PushCredentials(
            policy_pb2.PushCredentialsRequest(sealed_envelope=older), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
