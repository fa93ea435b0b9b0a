"""Advertise the box as ``_edge-agent._tcp.local.`` with python-zeroconf's async API."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

import ifaddr
from zeroconf import IPVersion, NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from edge_agent.discovery._config import DiscoveryConfig
from edge_agent.discovery._txt import SERVICE_TYPE, BoxAnnouncement
from edge_agent.errors import FailedPrecondition, Unavailable

__all__ = ["Advertiser", "advertised_endpoint", "advertised_http", "local_addresses"]

_log = logging.getLogger("edge_agent.discovery")


def local_addresses(interfaces: Sequence[str] = ()) -> list[str]:
    """The addresses to publish: the configured interface addresses, else every non-loopback,
    non-link-local address of the host."""
    if interfaces:
        return list(interfaces)
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            addr = ipaddress.ip_address(raw)
            if not (addr.is_loopback or addr.is_link_local or addr.is_multicast):
                found.append(str(addr))
    return list(dict.fromkeys(found))


def advertised_endpoint(
    listen: Sequence[str], local: Sequence[str], interfaces: Sequence[str] = ()
) -> tuple[list[str], int] | None:
    """The addresses and port to publish: only where the server really accepts connections.

    ``listen`` is ``server.listen`` in gRPC's ``host:port`` form (bound ports); ``local`` the
    host's own non-loopback addresses; ``interfaces`` the ``[discovery]`` restriction. A
    wildcard listener (``0.0.0.0``, ``[::]``) stands for every local address of its family
    (``[::]`` also accepts IPv4 on Linux's default dual stack). Loopback and Unix listeners
    publish nothing, unless ``interfaces`` names that loopback address explicitly (a
    single-host set-up, or a test). None when nothing is reachable.
    """
    wanted = {ipaddress.ip_address(a) for a in interfaces}
    host_has = {ipaddress.ip_address(a) for a in local}
    own = host_has | wanted
    for address in listen:
        if address.startswith("unix:"):
            continue
        host, _, port = address.rpartition(":")
        try:
            ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            continue  # a host name: which interface it binds is not ours to guess
        if ip.is_unspecified:
            # Only the host's real addresses: [discovery] interfaces filters them below.
            reachable = [
                a for a in host_has if not a.is_loopback and (ip.version == 6 or a.version == 4)
            ]
        else:
            reachable = [ip] if ip in own else []
        if wanted:
            reachable = [a for a in reachable if a in wanted]
        if reachable:
            return sorted(str(a) for a in reachable), int(port)
    return None


def advertised_http(
    listen: Sequence[str],
    addresses: Sequence[str],
    local: Sequence[str],
    interfaces: Sequence[str] = (),
) -> str | None:
    """The ``http.listen`` address (bound port) to publish beside the gRPC endpoint.

    The TXT record cannot say which address a port belongs to: a client connects to the
    advertised ``addresses``, so an HTTP listener is published only if it accepts
    connections on every one of them (the same reachability rules as
    :func:`advertised_endpoint`). None when no listener does.
    """
    wanted = set(addresses)
    for address in listen:
        endpoint = advertised_endpoint([address], local, interfaces)
        if endpoint is not None and wanted <= set(endpoint[0]):
            return address
    return None


def _ip_version(addresses: Sequence[str]) -> IPVersion:
    kinds = {ipaddress.ip_address(a).version for a in addresses}
    if kinds == {4}:
        return IPVersion.V4Only
    if kinds == {6}:
        return IPVersion.V6Only
    return IPVersion.All


class Advertiser:
    """Publishes one service instance; ``update`` re-announces changed TXT, ``stop`` says goodbye.

    Start it once the server is serving (clients that find it can connect at once).
    """

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        port: int,
        announcement: BoxAnnouncement,
        hostname: str | None = None,
        addresses: Sequence[str] | None = None,
    ) -> None:
        self._config = config
        self._port = port
        self._announcement = announcement
        host = (hostname or socket.gethostname()).split(".")[0] or "edge-agent"
        self._server = f"{host}.local."
        self._instance = config.instance_name or host
        self._addresses = list(addresses) if addresses is not None else None
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    @property
    def announcement(self) -> BoxAnnouncement:
        return self._announcement

    @property
    def service_name(self) -> str | None:
        """The registered name (it may differ from the configured one after a conflict)."""
        return self._info.name if self._info else None

    def _build_info(self, name: str, addresses: list[str]) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=self._port,
            properties=self._announcement.properties(),
            server=self._server,
            parsed_addresses=addresses,
        )

    async def start(self) -> None:
        if self._zc is not None:
            raise FailedPrecondition("the advertiser is already running")
        addresses = self._addresses or local_addresses(self._config.interfaces)
        if not addresses:
            raise Unavailable("no network address to advertise on")
        kwargs: dict[str, Any] = {"ip_version": _ip_version(addresses)}
        if self._config.interfaces:
            kwargs["interfaces"] = list(self._config.interfaces)
        try:
            zc = AsyncZeroconf(**kwargs)
        except OSError as exc:
            raise Unavailable("cannot open the mDNS socket") from exc
        info = self._build_info(f"{self._instance}.{SERVICE_TYPE}", addresses)
        try:
            # The first await probes the name; the returned task sends the announcements.
            await (await zc.async_register_service(info, allow_name_change=True))
        except (OSError, NonUniqueNameException) as exc:
            await zc.async_close()
            raise Unavailable("cannot register the mDNS service") from exc
        self._zc, self._info = zc, info
        _log.info("advertising %s on port %d", info.name, self._port)

    async def update(self, **changes: Any) -> None:
        """Change TXT fields (``pressure="elevated"``, ``model=…``) and announce them."""
        new = dataclasses.replace(self._announcement, **changes)
        if new == self._announcement:
            return
        self._announcement = new
        if self._zc is None or self._info is None:
            return  # not started: the next start publishes the new values
        info = self._build_info(self._info.name, self._info.parsed_addresses())
        await (await self._zc.async_update_service(info))
        self._info = info

    async def stop(self) -> None:
        """Send goodbye packets and close the mDNS sockets; safe to call twice."""
        zc, info = self._zc, self._info
        self._zc = self._info = None
        if zc is None:
            return
        try:
            if info is not None:
                # Await the returned task too: it completes once the goodbyes are sent.
                await (await zc.async_unregister_service(info))
        finally:
            await zc.async_close()
