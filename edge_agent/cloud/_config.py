"""The ``[cloud]`` config section: where the router is, how long to wait, when to give up.

An empty section is valid: it points at the public Hugging Face router with conservative
timeouts. Whether the cloud may be used at all is not decided here but by the signed policy
(``air_gapped``, data classes, budgets) and by the presence of a sealed credential.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

import httpx

from edge_agent._tomlreader import TableReader
from edge_agent.cloud._models import parse_model_ref
from edge_agent.errors import InvalidArgument

__all__ = ["DEFAULT_BASE_URL", "CloudConfig", "FailoverMode", "parse_cloud_config"]

DEFAULT_BASE_URL = "https://router.huggingface.co/v1"
FailoverMode = Literal["continue_local", "fail"]
_FAILOVER_MODES: tuple[FailoverMode, ...] = ("continue_local", "fail")
_ORG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True, slots=True)
class CloudConfig:
    """Settings of the router client, the connectivity monitor and failover (seconds)."""

    base_url: str = DEFAULT_BASE_URL
    model: str = "mistralai/Mistral-Small-3.1-24B-Instruct-2503:cheapest"
    bill_to: str | None = None
    proxy: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    write_timeout_s: float = 10.0
    pool_timeout_s: float = 5.0
    event_timeout_s: float = 30.0
    first_token_timeout_s: float = 20.0
    total_timeout_s: float = 300.0
    max_connections: int = 8
    probe_interval_s: float = 60.0
    probe_timeout_s: float = 5.0
    probe_backoff_initial_s: float = 5.0
    probe_backoff_max_s: float = 300.0
    catalog_refresh_s: float = 3600.0
    degraded_latency_ms: float = 2000.0
    breaker_failure_threshold: int = 3
    breaker_open_s: float = 30.0
    breaker_max_open_s: float = 600.0
    failover: FailoverMode = "continue_local"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(reader: TableReader, name: str, value: str, *, schemes: tuple[str, ...]) -> None:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise reader.error(name, "is not a valid URL") from None
    if url.scheme not in schemes or not url.host:
        raise reader.error(name, f"must be an absolute {' or '.join(schemes)} URL")
    # Plain HTTP would put the bearer token on the wire; only a loopback test router may use it.
    if name == "base_url" and url.scheme == "http" and not _loopback(url.host):
        raise reader.error(name, "must use https (http only for a loopback address)")


def parse_cloud_config(reader: TableReader) -> CloudConfig:
    """Read the ``[cloud]`` table; unknown keys are refused."""
    d = CloudConfig()
    base_url = reader.string("base_url", d.base_url).rstrip("/")
    _check_url(reader, "base_url", base_url, schemes=("https", "http"))
    model = reader.string("model", d.model)
    try:
        parse_model_ref(model)
    except InvalidArgument as exc:
        raise reader.error("model", exc.message.removeprefix("model: ")) from None
    bill_to = reader.optional_string("bill_to")
    if bill_to is not None and not _ORG.match(bill_to):
        raise reader.error("bill_to", "must be an organization name (letters, digits, . _ -)")
    proxy = reader.optional_string("proxy")
    if proxy is not None:
        _check_url(reader, "proxy", proxy, schemes=("http", "https"))

    def seconds(name: str, default: float, low: float = 0.001) -> float:
        return reader.number(name, default, min_value=low, max_value=86_400.0)

    config = CloudConfig(
        base_url=base_url,
        model=model,
        bill_to=bill_to,
        proxy=proxy,
        connect_timeout_s=seconds("connect_timeout_s", d.connect_timeout_s),
        read_timeout_s=seconds("read_timeout_s", d.read_timeout_s),
        write_timeout_s=seconds("write_timeout_s", d.write_timeout_s),
        pool_timeout_s=seconds("pool_timeout_s", d.pool_timeout_s),
        event_timeout_s=seconds("event_timeout_s", d.event_timeout_s),
        first_token_timeout_s=seconds("first_token_timeout_s", d.first_token_timeout_s),
        total_timeout_s=seconds("total_timeout_s", d.total_timeout_s),
        max_connections=reader.integer("max_connections", d.max_connections, min_value=1),
        probe_interval_s=seconds("probe_interval_s", d.probe_interval_s),
        probe_timeout_s=seconds("probe_timeout_s", d.probe_timeout_s),
        probe_backoff_initial_s=seconds("probe_backoff_initial_s", d.probe_backoff_initial_s),
        probe_backoff_max_s=seconds("probe_backoff_max_s", d.probe_backoff_max_s),
        catalog_refresh_s=seconds("catalog_refresh_s", d.catalog_refresh_s),
        degraded_latency_ms=reader.number(
            "degraded_latency_ms", d.degraded_latency_ms, min_value=1.0
        ),
        breaker_failure_threshold=reader.integer(
            "breaker_failure_threshold", d.breaker_failure_threshold, min_value=1, max_value=1000
        ),
        breaker_open_s=seconds("breaker_open_s", d.breaker_open_s),
        breaker_max_open_s=seconds("breaker_max_open_s", d.breaker_max_open_s),
        failover=reader.string("failover", d.failover, choices=_FAILOVER_MODES),  # type: ignore[arg-type]
    )
    if config.breaker_max_open_s < config.breaker_open_s:
        raise reader.error("breaker_max_open_s", "must be >= breaker_open_s")
    if config.probe_backoff_max_s < config.probe_backoff_initial_s:
        raise reader.error("probe_backoff_max_s", "must be >= probe_backoff_initial_s")
    if config.total_timeout_s < config.first_token_timeout_s:
        raise reader.error("total_timeout_s", "must be >= first_token_timeout_s")
    reader.finish()
    return config
