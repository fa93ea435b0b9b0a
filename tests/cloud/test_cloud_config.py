"""The [cloud] config section."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from edge_agent._tomlreader import TableReader
from edge_agent.cloud import DEFAULT_BASE_URL, CloudConfig, parse_cloud_config
from edge_agent.errors import ConfigError


def _parse(text: str) -> CloudConfig:
    table: dict[str, Any] = tomllib.loads(text)
    return parse_cloud_config(TableReader(table, source="edge-agent.toml", prefix="cloud."))


def test_empty_section_gives_defaults() -> None:
    config = _parse("")
    assert config == CloudConfig()
    assert config.base_url == DEFAULT_BASE_URL
    assert config.failover == "continue_local"
    assert config.bill_to is None


def test_full_section() -> None:
    config = _parse(
        """
        base_url = "https://router.example.org/v1/"
        model = "meta-llama/Llama-3.3-70B-Instruct:fastest"
        bill_to = "acme-clinics"
        proxy = "http://proxy.lan:3128"
        connect_timeout_s = 2
        event_timeout_s = 10.5
        first_token_timeout_s = 8
        total_timeout_s = 120
        probe_interval_s = 30
        breaker_failure_threshold = 5
        breaker_open_s = 10
        breaker_max_open_s = 60
        failover = "fail"
        """
    )
    assert config.base_url == "https://router.example.org/v1"
    assert config.model == "meta-llama/Llama-3.3-70B-Instruct:fastest"
    assert config.bill_to == "acme-clinics"
    assert config.proxy == "http://proxy.lan:3128"
    assert config.connect_timeout_s == 2.0
    assert config.event_timeout_s == 10.5
    assert config.breaker_failure_threshold == 5
    assert config.failover == "fail"


def test_loopback_http_is_allowed_for_test_routers() -> None:
    assert _parse('base_url = "http://127.0.0.1:8080/v1"').base_url.startswith("http://")
    assert _parse('base_url = "http://localhost:8080/v1"').base_url.startswith("http://")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('base_url = "http://router.huggingface.co/v1"', "cloud.base_url"),
        ('base_url = "ftp://x/v1"', "cloud.base_url"),
        ('base_url = "not a url"', "cloud.base_url"),
        ('model = "no-slash"', "cloud.model"),
        ('model = "org/m:Fastest"', "cloud.model"),
        ('bill_to = "two words"', "cloud.bill_to"),
        ('proxy = "socks5://x:1"', "cloud.proxy"),
        ("connect_timeout_s = 0", "cloud.connect_timeout_s"),
        ('connect_timeout_s = "5"', "cloud.connect_timeout_s"),
        ("breaker_failure_threshold = 0", "cloud.breaker_failure_threshold"),
        ('failover = "retry"', "cloud.failover"),
        ("breaker_open_s = 100\nbreaker_max_open_s = 10", "cloud.breaker_max_open_s"),
        ("probe_backoff_initial_s = 9\nprobe_backoff_max_s = 1", "cloud.probe_backoff_max_s"),
        ("first_token_timeout_s = 60\ntotal_timeout_s = 30", "cloud.total_timeout_s"),
        ("timeout = 3", "cloud.timeout"),
    ],
)
def test_invalid_values_name_file_and_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(text)
    assert "edge-agent.toml" in info.value.message
    assert key in info.value.message
