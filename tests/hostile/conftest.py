"""Hostile-suite fixtures: one real daemon per module (rate limits off), watched for errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# hostile_common puts the daemon harness and the fake router on the path.
from hostile_common import hostile_config  # noqa: I001

from daemon_harness import RunningAgent, start_agent, stop_agent


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    running, thread = start_agent(hostile_config(tmp_path_factory.mktemp("hostile")))
    yield running
    stop_agent(running, thread)
