"""Fixtures: a real daemon with the OpenAI-compatible API on port 0, and SDK clients."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent.parent
for _folder in ("daemon", "cloud"):  # the daemon harness; the stand-in router
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from daemon_harness import RunningAgent, start_agent, stop_agent  # noqa: E402
from http_harness import http_config, openai_client  # noqa: E402
from openai import OpenAI  # noqa: E402


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """The open demo's settings: any API key from loopback."""
    running, thread = start_agent(http_config(tmp_path_factory.mktemp("http")))
    yield running
    stop_agent(running, thread)


@pytest.fixture
def client(daemon: RunningAgent) -> Iterator[OpenAI]:
    with openai_client(daemon, api_key="sk-anything") as c:
        yield c
