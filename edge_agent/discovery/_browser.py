"""Find edge-agent boxes on the LAN, and connect to one with its fingerprint pinned."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edge_agent.discovery._txt import SERVICE_TYPE, BoxAnnouncement
from edge_agent.errors import FailedPrecondition, Unavailable
from edge_agent.tls import PinnedCredentials, normalize_fingerprint, pinned_channel_credentials

__all__ = ["BoxBrowser", "DiscoveredBox", "discover", "discover_sync", "pinned_credentials_for"]

_RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True, slots=True)
class DiscoveredBox:
    """One box as its mDNS records describe it. Nothing here is authenticated: the
    fingerprint is a claim that :func:`pinned_credentials_for` then holds the box to."""

    name: str
    host: str
    addresses: tuple[str, ...]
    port: int
    announcement: BoxAnnouncement
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str | None:
        try:
            return normalize_fingerprint(self.announcement.fingerprint)
        except ValueError:
            return None

    @property
    def openai_base_url(self) -> str | None:
        """``http(s)://ADDRESS:PORT/v1`` of the box's OpenAI-compatible API, on its first
        advertised address; None when it advertises none. Pin ``fingerprint`` for https."""
        a = self.announcement
        if a.http_port is None or not self.addresses:
            return None
        address = self.addresses[0]
        host = f"[{address}]" if ":" in address else address
        return f"{'https' if a.http_tls else 'http'}://{host}:{a.http_port}/v1"

    def to_json(self) -> dict[str, Any]:
        a = self.announcement
        return {
            "name": self.name,
            "host": self.host,
            "addresses": list(self.addresses),
            "port": self.port,
            "mtls_port": a.mtls_port,
            "http_port": a.http_port,
            "http_tls": a.http_tls,
            "openai_base_url": self.openai_base_url,
            "api": a.api,
            "model": a.model,
            "model_version": a.model_version,
            "execution_provider": a.execution_provider,
            "pressure": a.pressure,
            "fingerprint_sha256": self.fingerprint,
            "device_id": a.device_id,
        }


def _decode(props: dict[bytes, bytes | None]) -> dict[str, str]:
    return {
        k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
        for k, v in props.items()
    }


class BoxBrowser:
    """Keeps an up-to-date view of the boxes on the network while it is open.

    ``async with BoxBrowser() as browser: await browser.wait_for(lambda boxes: …)``.
    """

    def __init__(self, *, interfaces: Sequence[str] = ()) -> None:
        self._interfaces = list(interfaces)
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._boxes: dict[str, DiscoveredBox] = {}
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def boxes(self) -> list[DiscoveredBox]:
        return sorted(self._boxes.values(), key=lambda b: b.name)

    async def __aenter__(self) -> BoxBrowser:
        kwargs: dict[str, Any] = {}
        if self._interfaces:
            kwargs["interfaces"] = self._interfaces
            versions = {ipaddress.ip_address(a).version for a in self._interfaces}
            kwargs["ip_version"] = (
                IPVersion.V4Only
                if versions == {4}
                else IPVersion.V6Only
                if versions == {6}
                else IPVersion.All
            )
        try:
            self._zc = AsyncZeroconf(**kwargs)
        except OSError as exc:
            raise Unavailable("cannot open the mDNS socket") from exc
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            await self._zc.async_close()
        self._browser = self._zc = None

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            if self._boxes.pop(name, None) is not None:
                self._changed.set()
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zc.zeroconf, _RESOLVE_TIMEOUT_MS):
            return
        if info.port is None:
            return
        props = _decode(info.properties)
        self._boxes[name] = DiscoveredBox(
            name=name,
            host=(info.server or "").rstrip("."),
            addresses=tuple(info.parsed_scoped_addresses()),
            port=info.port,
            announcement=BoxAnnouncement.from_properties(props),
            properties=props,
        )
        self._changed.set()

    async def settle(self) -> None:
        """Let resolutions already under way finish (bounded by their own timeout)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_RESOLVE_TIMEOUT_MS / 1000)

    async def wait_for(
        self, predicate: Callable[[list[DiscoveredBox]], bool], timeout_s: float
    ) -> list[DiscoveredBox]:
        """Wait until ``predicate(boxes)`` holds; TimeoutError after ``timeout_s``."""
        if self._zc is None:
            raise FailedPrecondition("the browser is not open")
        async with asyncio.timeout(timeout_s):
            while not predicate(self.boxes):
                self._changed.clear()
                await self._changed.wait()
        return self.boxes


async def discover(
    timeout_s: float = 3.0, *, interfaces: Sequence[str] = ()
) -> list[DiscoveredBox]:
    """Browse for ``timeout_s`` seconds and return the boxes found."""
    async with BoxBrowser(interfaces=interfaces) as browser:
        await asyncio.sleep(timeout_s)
        await browser.settle()
        return browser.boxes


def discover_sync(timeout_s: float = 3.0, *, interfaces: Sequence[str] = ()) -> list[DiscoveredBox]:
    """:func:`discover` for code without an event loop (the CLI)."""
    return asyncio.run(discover(timeout_s, interfaces=interfaces))


def pinned_credentials_for(
    box: DiscoveredBox,
    *,
    mtls: bool = False,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    fingerprint: str | None = None,
) -> tuple[str, PinnedCredentials]:
    """``(target, credentials)`` to reach ``box`` with its certificate pinned.

    ``fingerprint`` overrides the advertised one (pin known out of band, e.g. from the
    enrollment sheet); otherwise the advertised one is trusted on first use.
    """
    pin = fingerprint or box.fingerprint
    if not pin:
        raise FailedPrecondition(f"{box.name} advertises no valid TLS fingerprint")
    port = box.announcement.mtls_port if mtls else box.port
    if port is None:
        raise FailedPrecondition(f"{box.name} advertises no mTLS port")
    last: Unavailable | None = None
    for address in box.addresses:
        try:
            creds = pinned_channel_credentials(
                address,
                port,
                pin,
                client_cert_pem=client_cert_pem,
                client_key_pem=client_key_pem,
            )
        except Unavailable as exc:
            last = exc
            continue
        host = f"[{address}]" if ":" in address else address
        return f"{host}:{port}", creds
    raise Unavailable(f"cannot reach {box.name} on any advertised address") from last
