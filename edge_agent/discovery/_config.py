"""The ``[discovery]`` config section."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from edge_agent._tomlreader import TableReader

__all__ = ["DiscoveryConfig", "parse_discovery_config"]


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """mDNS advertisement settings; an empty section advertises on every interface."""

    enabled: bool = True
    # IP addresses of the interfaces to announce on (and to publish); empty means all.
    interfaces: tuple[str, ...] = ()
    # The DNS-SD instance name; default: the host name.
    instance_name: str | None = None


def parse_discovery_config(reader: TableReader) -> DiscoveryConfig:
    interfaces = reader.string_list("interfaces", ())
    for item in interfaces:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise reader.error("interfaces", f"not an IP address: {item!r}") from None
    name = reader.optional_string("instance_name")
    if name is not None and (not 0 < len(name.encode()) <= 63 or "." in name):
        raise reader.error("instance_name", "must be 1-63 bytes without dots")
    config = DiscoveryConfig(
        enabled=reader.boolean("enabled", True), interfaces=interfaces, instance_name=name
    )
    reader.finish()
    return config
