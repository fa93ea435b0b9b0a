"""The ``[metrics]`` config section: whether and where the Prometheus endpoint listens."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from edge_agent._tomlreader import TableReader

__all__ = ["MetricsConfig", "parse_metrics_config"]


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    # Loopback by default: metrics reveal load patterns; expose them on purpose, not by accident.
    address: str = "127.0.0.1"
    port: int = 9464  # the port Prometheus' registry lists for exporters of this kind


def parse_metrics_config(reader: TableReader) -> MetricsConfig:
    d = MetricsConfig()
    enabled = reader.boolean("enabled", d.enabled)
    address = reader.string("address", d.address)
    if address != "localhost":
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise reader.error(
                "address", f"expected an IP address or localhost, got {address!r}"
            ) from None
    port = reader.integer("port", d.port, min_value=0, max_value=65535)
    reader.finish()
    return MetricsConfig(enabled=enabled, address=address, port=port)
