"""Shared constants and helpers of the cloud tests (a uniquely named module: several test
folders have a ``conftest``, so tests must not import from ``conftest`` by name)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from edge_agent.cloud import CloudConfig, RouterClient

FAKE_TOKEN = "hf_FAKEtokenSENTINEL0123456789abcdef"

MakeClient = Callable[..., RouterClient]


def fast_config(base_url: str, **overrides: Any) -> CloudConfig:
    """Short deadlines so every fault resolves in well under a second."""
    base = CloudConfig(
        base_url=base_url,
        model="org/big-model",
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
        write_timeout_s=1.0,
        pool_timeout_s=1.0,
        event_timeout_s=0.4,
        first_token_timeout_s=0.6,
        total_timeout_s=3.0,
        probe_interval_s=0.05,
        probe_timeout_s=0.5,
        probe_backoff_initial_s=0.02,
        probe_backoff_max_s=0.1,
        catalog_refresh_s=3600.0,
        breaker_failure_threshold=2,
        breaker_open_s=0.3,
        breaker_max_open_s=1.0,
    )
    return dataclasses.replace(base, **overrides)
