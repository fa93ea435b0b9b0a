"""The Prometheus endpoint over real HTTP, parsed by prometheus_client's own parser."""

from __future__ import annotations

import socket
import threading
import tomllib
from pathlib import Path

import httpx
import pytest
from pressure_support import Box
from prometheus_client.parser import text_string_to_metric_families

from edge_agent._tomlreader import TableReader
from edge_agent.errors import ConfigError
from edge_agent.metrics import Metrics, MetricsConfig, MetricsServer, parse_metrics_config
from edge_agent.pressure import AdmissionConfig, AdmissionController, EngineLoad

GIB = 1024**3

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> tuple[set[str], Samples]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_endpoint_families_present_and_values_moving(tmp_path: Path) -> None:
    metrics = Metrics(version="0.1.0")
    srv = MetricsServer(metrics, "127.0.0.1", 0)
    threads_before = set(threading.enumerate())
    srv.start()
    url = srv.url
    try:
        assert srv.port > 0
        families, samples = await scrape(srv.url)
        for name in (
            "edge_agent_requests",
            "edge_agent_tokens",
            "edge_agent_time_to_first_token_seconds",
            "edge_agent_token_latency_seconds",
            "edge_agent_engine_restarts",
            "edge_agent_engine_regrouped_requests",
            "edge_agent_engine_prefill_chunks",
            "edge_agent_engine_prefilling_requests",
            "edge_agent_escalations",
            "edge_agent_budget_used_tokens",
            "edge_agent_budget_used_usd",
            "edge_agent_connectivity_state",
            "edge_agent_build_info",
        ):
            assert name in families, name
        assert "edge_agent_pressure_level" not in families  # no snapshot yet: nothing faked
        assert value(samples, "edge_agent_build_info", version="0.1.0") == 1.0

        box = Box(tmp_path, total=16 * GIB, available=12 * GIB)
        box.engine = EngineLoad(2, 1, GIB, 4 * GIB, 0.08)
        box.tree.set_psi("memory", 12.5, 6.0)
        box.resample()
        controller = AdmissionController(
            AdmissionConfig(), max_active=2, snapshot=lambda: box.snapshot
        )
        ticket = await controller.acquire(cost_bytes=GIB)
        metrics.observe_pressure(box.snapshot)
        metrics.observe_admission(controller.stats)
        metrics.request_finished("ok", "local", 12, 30, ttft_s=0.4, per_token_s=0.05)
        metrics.request_finished("resource_exhausted", "local")
        metrics.request_finished("ok", "cloud", 5, 7, ttft_s=1.5, per_token_s=0.02)
        metrics.engine_restarted()
        metrics.engine_regrouped(3)
        metrics.engine_regrouped(0)
        metrics.engine_prefill(5, 1)
        metrics.engine_prefill(0, 0)
        metrics.escalated("pressure")
        metrics.set_budget(1234, 0.56)
        metrics.set_connectivity("online")
        metrics.set_connectivity("offline")
        metrics.set_model("mistral-small-3", "2025.01-r3", "cpu")

        families, samples = await scrape(srv.url)
        for name in (
            "edge_agent_pressure_level",
            "edge_agent_pressure_signal_level",
            "edge_agent_psi_avg10_ratio",
            "edge_agent_psi_stall_seconds",
            "edge_agent_memory_available_bytes",
            "edge_agent_queue_depth",
            "edge_agent_active_requests",
            "edge_agent_admission_held_bytes",
            "edge_agent_kv_cache_used_bytes",
            "edge_agent_model_info",
        ):
            assert name in families, name
        assert value(samples, "edge_agent_pressure_level") == 1.0
        assert (
            value(samples, "edge_agent_pressure_signal_level", signal="memory.psi_full_avg10")
            == 1.0
        )
        assert value(
            samples, "edge_agent_psi_avg10_ratio", resource="memory", kind="full"
        ) == pytest.approx(0.06)
        assert value(samples, "edge_agent_memory_available_bytes") == 12 * GIB
        assert value(samples, "edge_agent_active_requests") == 1.0
        assert value(samples, "edge_agent_admission_held_bytes") == GIB
        assert value(samples, "edge_agent_kv_cache_capacity_bytes") == 4 * GIB
        assert value(samples, "edge_agent_engine_token_latency_seconds") == 0.08
        assert value(samples, "edge_agent_requests_total", outcome="ok", destination="local") == 1
        assert (
            value(
                samples,
                "edge_agent_requests_total",
                outcome="resource_exhausted",
                destination="local",
            )
            == 1
        )
        assert value(samples, "edge_agent_tokens_total", direction="out", destination="local") == 30
        assert (
            value(samples, "edge_agent_time_to_first_token_seconds_bucket", destination="local",
                  le="0.5")
            == 1
        )  # fmt: skip
        assert value(samples, "edge_agent_token_latency_seconds_count", destination="cloud") == 1
        assert value(samples, "edge_agent_engine_restarts_total") == 1
        assert value(samples, "edge_agent_engine_regrouped_requests_total") == 3
        assert value(samples, "edge_agent_engine_prefill_chunks_total") == 5
        assert value(samples, "edge_agent_engine_prefilling_requests") == 0
        assert value(samples, "edge_agent_escalations_total", reason="pressure") == 1
        assert value(samples, "edge_agent_budget_used_usd") == 0.56
        assert value(samples, "edge_agent_connectivity_state", state="offline") == 1
        assert value(samples, "edge_agent_connectivity_state", state="online") == 0

        # Values keep moving with new snapshots and stats.
        ticket.release()
        box.tree.set_psi("memory", 0.0, 0.0)
        for _ in range(3):
            box.resample()
        metrics.observe_pressure(box.snapshot)
        metrics.observe_admission(controller.stats)
        _, samples = await scrape(srv.url)
        assert value(samples, "edge_agent_pressure_level") == 0.0
        assert value(samples, "edge_agent_active_requests") == 0.0
        assert value(samples, "edge_agent_admission_admitted_total") == 1
    finally:
        srv.stop()
    # Stopped means stopped: no thread left behind, the port refuses connections.
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(httpx.ConnectError):
        await scrape(url)


def test_labels_never_carry_free_text() -> None:
    metrics = Metrics()
    secret = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    metrics.request_finished("ok", "Summarise: patient John Doe has " + secret)
    metrics.escalated(secret)
    for i in range(40):
        metrics.escalated(f"reason_{i}")
    text = metrics.render().decode()
    assert secret not in text
    assert "John" not in text
    assert 'destination="invalid"' in text
    assert 'reason="other"' in text  # cardinality is capped at 32 values per label
    assert 'reason="reason_0"' in text


def test_port_in_use_is_a_config_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = MetricsServer(Metrics(), "127.0.0.1", port)
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
            srv.start()


def test_metrics_config_section() -> None:
    def parse(text: str) -> MetricsConfig:
        return parse_metrics_config(TableReader(tomllib.loads(text), source="agent.toml"))

    assert parse("") == MetricsConfig(enabled=True, address="127.0.0.1", port=9464)
    assert parse("address = '::1'\nport = 0\nenabled = false") == MetricsConfig(False, "::1", 0)
    with pytest.raises(ConfigError, match="unknown key 'metrics_port'"):
        parse("metrics_port = 1")
    with pytest.raises(ConfigError, match="address"):
        parse("address = 'example.com'")
    with pytest.raises(ConfigError, match="port"):
        parse("port = 70000")
