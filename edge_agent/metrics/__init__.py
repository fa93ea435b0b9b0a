"""Prometheus metrics: the families (docs/METRICS.md), their config and the HTTP endpoint."""

from __future__ import annotations

from edge_agent.metrics._config import MetricsConfig, parse_metrics_config
from edge_agent.metrics._metrics import Metrics
from edge_agent.metrics._server import MetricsServer

__all__ = ["Metrics", "MetricsConfig", "MetricsServer", "parse_metrics_config"]
