"""The whole escalation path on a real daemon: signed policy, sealed token, router stand-in.

Public data under a LARGE_MODEL request goes to the cloud (provenance says so, the budget
and the audit log record it); restricted data never leaves; a failing router falls back to
the local model; the token appears in no log line.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from daemon_harness import RunningAgent, make_config, start_agent, stop_agent
from fake_router import DEFAULT_MODEL, FakeRouter, Reply, Status

from edge_agent.client import ChatChunk, ChatOptions, Client, DataClass, RoutePreference
from edge_agent.config import AgentConfig
from edge_agent.credentials import DeviceIdentity, SecretToken, seal_credential
from edge_agent.router import sign_policy

TOKEN = "hf_E2Esentinel_9f8e7d6c5b4a3210"

POLICY = f"""
version = 1
default_data_class = "restricted"

[data_classes]
public = "cloud"
internal = "local"
confidential = "local"
restricted = "local"

[budget]
daily_tokens = 100000
monthly_tokens = 1000000
daily_usd = 5.0
monthly_usd = 50.0

[cloud]
default_model = "{DEFAULT_MODEL}"
provider = "together"

[cloud.models."{DEFAULT_MODEL}"]
input_usd_per_mtok = 0.5
output_usd_per_mtok = 1.0

[clients."*"]
escalation = true
max_cloud_data_class = "public"
"""


def _box(tmp: Path, router: FakeRouter) -> AgentConfig:
    fleet = ec.generate_private_key(ec.SECP256R1())
    pub = tmp / "fleet.pub.pem"
    pub.write_bytes(
        fleet.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    base = make_config(tmp)
    config = dataclasses.replace(
        base,
        cloud=dataclasses.replace(base.cloud, base_url=router.base_url, probe_interval_s=3600),
        policy=dataclasses.replace(base.policy, trusted_keys=(pub,)),
        credentials=dataclasses.replace(base.credentials, trusted_keys=(pub,)),
    )
    policy_path = config.policy.signed_policy_path
    policy_path.parent.mkdir(parents=True, exist_ok=True)
    policy_path.write_bytes(sign_policy(POLICY, fleet))
    device = DeviceIdentity.load_or_create(config.credentials.device_key)
    envelope = seal_credential(
        SecretToken(TOKEN),
        device_public_key=device.public_key,
        fleet_key=fleet,
        expires_at=datetime.now(UTC) + timedelta(days=1),
        allowed_models=[DEFAULT_MODEL],
    )
    config.credentials.envelope_path.parent.mkdir(parents=True, exist_ok=True)
    config.credentials.envelope_path.write_bytes(envelope)
    return config


@pytest.fixture
def router() -> Iterator[FakeRouter]:
    server = FakeRouter(TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def box(
    tmp_path: Path, router: FakeRouter, caplog: pytest.LogCaptureFixture
) -> Iterator[RunningAgent]:
    caplog.set_level(logging.DEBUG)
    running, thread = start_agent(_box(tmp_path, router))
    running.call(running.agent.connectivity.probe_now())
    try:
        yield running
    finally:
        stop_agent(running, thread)
        # The token lives in memory only: no log line of the whole run carries it.
        assert TOKEN not in caplog.text


def _ask(box: RunningAgent, data_class: DataClass, text: str = "Hello?") -> list[ChatChunk]:
    opts = ChatOptions(max_tokens=16, data_class=data_class, route=RoutePreference.LARGE_MODEL)
    with Client(box.target) as client:
        return list(client.chat([("user", text)], opts, timeout=60))


def test_public_data_escalates_to_the_cloud_and_is_audited(
    box: RunningAgent, router: FakeRouter
) -> None:
    chunks = _ask(box, DataClass.PUBLIC)
    final = chunks[-1]
    assert final.provenance is not None
    assert final.provenance.destination == "cloud"
    assert final.provenance.decision_reason == "cloud.large_model_requested"
    assert final.provenance.cloud_provider
    assert "".join(c.delta for c in chunks) == "Hello from the cloud."
    assert len(router.chat_requests()) == 1
    sent = router.chat_requests()[0]
    assert sent.headers.get("authorization") == f"Bearer {TOKEN}"
    records = box.agent.audit.tail(5)
    assert records[-1].destination == "cloud"
    assert records[-1].data_class == "public"
    assert records[-1].tokens_out > 0
    assert records[-1].prompt is None
    assert box.agent.audit.verify().ok
    usage = box.agent.ledger.usage(datetime.now(UTC))
    assert usage.day_tokens > 0


def test_restricted_data_never_leaves_the_box(box: RunningAgent, router: FakeRouter) -> None:
    final = _ask(box, DataClass.RESTRICTED, "Patient 4711 has a fever.")[-1]
    assert final.provenance is not None
    assert final.provenance.destination == "local"
    assert final.provenance.decision_reason.startswith("local.large_model_requested_but_")
    assert router.chat_requests() == []
    assert box.agent.audit.tail(1)[-1].destination == "local"


def test_router_failure_before_the_first_token_falls_back_to_local(
    box: RunningAgent, router: FakeRouter
) -> None:
    router.on_chat(Status(503))
    chunks = _ask(box, DataClass.PUBLIC)
    final = chunks[-1]
    assert final.provenance is not None
    assert final.provenance.destination == "local"
    assert final.provenance.decision_reason == "local.cloud_failed_before_first_token"
    assert final.usage is not None and final.usage.completion_tokens > 0
    assert len(router.chat_requests()) == 1


def test_cut_mid_stream_continues_locally(box: RunningAgent, router: FakeRouter) -> None:
    router.on_chat(Reply(then="cut", after=2))
    chunks = _ask(box, DataClass.PUBLIC)
    text = "".join(c.delta for c in chunks)
    assert text.startswith("Hello from")
    final = chunks[-1]
    assert final.provenance is not None
    assert final.provenance.destination == "local"
    assert final.provenance.decision_reason == "local.cloud_failover"


def test_concurrent_escalations_never_overshoot_the_budget(
    box: RunningAgent, router: FakeRouter
) -> None:
    errors: list[BaseException] = []

    def one() -> None:
        try:
            _ask(box, DataClass.PUBLIC)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    usage = box.agent.ledger.usage(datetime.now(UTC))
    assert usage.day_tokens <= 100000
