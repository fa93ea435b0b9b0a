"""The escalating box of the end-to-end, HTTP and hostile tests: signed policy, sealed token,
stand-in router."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from daemon_harness import RunningAgent, make_config, start_agent, stop_agent
from fake_router import DEFAULT_MODEL, FakeRouter

from edge_agent.config import AgentConfig
from edge_agent.credentials import DeviceIdentity, SecretToken, seal_credential
from edge_agent.policy import sign_policy

TOKEN = "hf_E2Esentinel_9f8e7d6c5b4a3210"


def escalation_policy(budget_scale: int = 1) -> str:
    """A signed-policy text sending public data to the stand-in's default model; the budgets
    are multiplied by ``budget_scale`` (the hostile suites spend far more)."""
    return f"""
version = 1
default_data_class = "restricted"

[data_classes]
public = "cloud"
internal = "local"
confidential = "local"
restricted = "local"

[budget]
daily_tokens = {100000 * budget_scale}
monthly_tokens = {1000000 * budget_scale}
daily_usd = {5.0 * budget_scale}
monthly_usd = {50.0 * budget_scale}

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


POLICY = escalation_policy()


def serving_router(token: str = TOKEN) -> Iterator[FakeRouter]:
    """The stand-in router for a fixture: ``yield from serving_router()``."""
    server = FakeRouter(token).start()
    try:
        yield server
    finally:
        server.stop()


def escalating(
    base: AgentConfig,
    tmp: Path,
    base_url: str,
    *,
    policy: str = POLICY,
    token: str = TOKEN,
    fleet: ec.EllipticCurvePrivateKey | None = None,
    **cloud: Any,
) -> AgentConfig:
    """``base`` made a box whose fleet signed ``policy`` and sealed ``token`` to it, with the
    router at ``base_url``; ``cloud`` overrides [cloud] keys."""
    fleet = fleet or ec.generate_private_key(ec.SECP256R1())
    pub = tmp / "fleet.pub.pem"
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_bytes(
        fleet.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = dataclasses.replace(
        base,
        cloud=dataclasses.replace(base.cloud, base_url=base_url, **cloud),
        policy=dataclasses.replace(base.policy, trusted_keys=(pub,)),
        credentials=dataclasses.replace(base.credentials, trusted_keys=(pub,)),
    )
    policy_path = config.policy.signed_policy_path
    policy_path.parent.mkdir(parents=True, exist_ok=True)
    policy_path.write_bytes(sign_policy(policy, fleet))
    device = DeviceIdentity.load_or_create(config.credentials.device_key)
    envelope = seal_credential(
        SecretToken(token),
        device_public_key=device.public_key,
        fleet_key=fleet,
        expires_at=datetime.now(UTC) + timedelta(days=1),
        allowed_models=[DEFAULT_MODEL],
    )
    config.credentials.envelope_path.parent.mkdir(parents=True, exist_ok=True)
    config.credentials.envelope_path.write_bytes(envelope)
    return config


def box_config(
    tmp: Path, router: FakeRouter, *, base: AgentConfig | None = None, **cloud: Any
) -> AgentConfig:
    """A box whose signed policy sends public data to the stand-in router (sealed token).

    ``base`` is the daemon harness's config unless given (the HTTP tests pass theirs).
    """
    cloud.setdefault("probe_interval_s", 3600)
    return escalating(base if base is not None else make_config(tmp), tmp, router.base_url, **cloud)


def run_box(config: AgentConfig, caplog: pytest.LogCaptureFixture) -> Iterator[RunningAgent]:
    """Start the daemon, probe the router once, and stop it after the test (token-free logs)."""
    caplog.set_level(logging.DEBUG)
    running, thread = start_agent(config)
    running.call(running.agent.connectivity.probe_now())
    try:
        yield running
    finally:
        stop_agent(running, thread)
        # The token lives in memory only: no log line of the whole run carries it.
        assert TOKEN not in caplog.text
