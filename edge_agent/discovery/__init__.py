"""mDNS discovery: advertise this box, find boxes, connect with the fingerprint pinned."""

from edge_agent.discovery._advertiser import (
    Advertiser,
    advertised_endpoint,
    advertised_http,
    local_addresses,
)
from edge_agent.discovery._browser import (
    BoxBrowser,
    DiscoveredBox,
    discover,
    discover_sync,
    pinned_credentials_for,
)
from edge_agent.discovery._cli import add_discover_command
from edge_agent.discovery._config import DiscoveryConfig, parse_discovery_config
from edge_agent.discovery._txt import SERVICE_TYPE, BoxAnnouncement
from edge_agent.tls import pinned_channel_credentials

__all__ = [
    "SERVICE_TYPE",
    "Advertiser",
    "BoxAnnouncement",
    "BoxBrowser",
    "DiscoveredBox",
    "DiscoveryConfig",
    "add_discover_command",
    "advertised_endpoint",
    "advertised_http",
    "discover",
    "discover_sync",
    "local_addresses",
    "parse_discovery_config",
    "pinned_channel_credentials",
    "pinned_credentials_for",
]
