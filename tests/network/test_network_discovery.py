"""mDNS on loopback: a real advertiser and a real browser (python-zeroconf), both bound to
127.0.0.1, as python-zeroconf's own tests do."""

from __future__ import annotations

import grpc
import pytest
from network_helpers import Pki, serve, strict_auth

from edge_agent._proto.edge_agent.v1 import inference_pb2, inference_pb2_grpc
from edge_agent._tomlreader import TableReader
from edge_agent.discovery import (
    Advertiser,
    BoxAnnouncement,
    BoxBrowser,
    DiscoveredBox,
    DiscoveryConfig,
    advertised_endpoint,
    advertised_http,
    discover,
    parse_discovery_config,
    pinned_credentials_for,
)
from edge_agent.errors import ConfigError, PermissionDenied
from edge_agent.tls import Listener, TokenEntry, new_token

LOOPBACK = ("127.0.0.1",)
CONFIG = DiscoveryConfig(interfaces=LOOPBACK, instance_name="box-under-test")


def _announcement(pki: Pki, **changes: object) -> BoxAnnouncement:
    base = BoxAnnouncement(
        fingerprint=pki.device.fingerprint,
        device_id="dev-0001",
        model="mistral-small-3",
        model_version="2501.1",
        execution_provider="cpu",
        pressure="ok",
        mtls_port=50052,
        http_port=8443,
        http_tls=True,
    )
    import dataclasses

    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _ours(boxes: list[DiscoveredBox]) -> DiscoveredBox | None:
    return next((b for b in boxes if b.name.startswith("box-under-test")), None)


async def test_advertisement_is_found_updated_and_says_goodbye(pki: Pki) -> None:
    advertiser = Advertiser(CONFIG, port=50051, announcement=_announcement(pki), hostname="testbox")
    async with BoxBrowser(interfaces=LOOPBACK) as browser:
        await advertiser.start()
        try:
            boxes = await browser.wait_for(lambda bs: _ours(bs) is not None, timeout_s=10)
            box = _ours(boxes)
            assert box is not None
            assert box.port == 50051
            assert box.host == "testbox.local"
            assert "127.0.0.1" in box.addresses
            assert box.fingerprint == pki.device.fingerprint
            assert box.announcement == _announcement(pki)
            assert box.properties["api"] == "v1"
            assert box.properties["https"] == "8443"
            assert "http" not in box.properties
            assert box.openai_base_url == "https://127.0.0.1:8443/v1"

            await advertiser.update(pressure="critical", model_version="2501.2")
            boxes = await browser.wait_for(
                lambda bs: (b := _ours(bs)) is not None and b.announcement.pressure == "critical",
                timeout_s=10,
            )
            box = _ours(boxes)
            assert box is not None
            assert box.announcement.model_version == "2501.2"
        finally:
            await advertiser.stop()
        # Goodbye packets (TTL 0) remove it from the browser's view.
        await browser.wait_for(lambda bs: _ours(bs) is None, timeout_s=10)
    await advertiser.stop()  # idempotent


async def test_discover_lists_the_box_and_connects_with_the_pin(pki: Pki) -> None:
    token = new_token()
    auth = strict_auth(tokens=(TokenEntry(name="kiosk", role="client", sha256=token.sha256),))
    async with serve(pki, auth, [Listener("127.0.0.1:0", "tls")]) as running:
        port = running.port("tls")
        advertiser = Advertiser(
            CONFIG, port=port, announcement=_announcement(pki), hostname="testbox"
        )
        await advertiser.start()
        try:
            boxes = await discover(5.0, interfaces=LOOPBACK)  # a loaded CI box answers late
        finally:
            await advertiser.stop()
        box = _ours(boxes)
        assert box is not None, boxes
        assert box.to_json()["fingerprint_sha256"] == pki.device.fingerprint

        target, pinned = pinned_credentials_for(box)
        async with grpc.aio.secure_channel(
            target, pinned.credentials, options=pinned.options
        ) as channel:
            reply = await inference_pb2_grpc.InferenceStub(channel).GetStatus(
                inference_pb2.GetStatusRequest(),
                metadata=(("authorization", f"Bearer {token.token}"),),
                timeout=10,
            )
        assert reply.device_id == "token:kiosk:client"

        # A box advertising someone else's fingerprint (spoofed TXT) is refused.
        spoofed = DiscoveredBox(
            name=box.name,
            host=box.host,
            addresses=box.addresses,
            port=box.port,
            announcement=_announcement(pki, fingerprint="ab" * 32),
        )
        with pytest.raises(PermissionDenied):
            pinned_credentials_for(spoofed)


def test_txt_round_trip_and_hostile_values() -> None:
    a = BoxAnnouncement(fingerprint="f" * 64, device_id="d", model="m" * 400, mtls_port=7)
    props = a.properties()
    assert all(len(f"{k}={v}".encode()) <= 255 for k, v in props.items())
    back = BoxAnnouncement.from_properties(props)
    assert back.mtls_port == 7
    assert back.fingerprint == "f" * 64
    assert back.http_port is None and "http" not in props and "https" not in props
    junk = BoxAnnouncement.from_properties(
        {"mtls": "99999", "fp": "zz", "http": "0x50", "https": "²"}
    )
    assert junk.mtls_port is None
    assert junk.http_port is None
    box = DiscoveredBox("n", "h", ("127.0.0.1",), 1, junk)
    assert box.fingerprint is None
    assert box.openai_base_url is None
    assert box.to_json()["openai_base_url"] is None


@pytest.mark.parametrize(
    ("props", "port", "tls", "url"),
    [
        ({"http": "8080"}, 8080, False, "http://[2001:db8::10]:8080/v1"),
        ({"https": "8443"}, 8443, True, "https://[2001:db8::10]:8443/v1"),
        # Both (not something we send): a client is never steered to plaintext.
        ({"http": "8080", "https": "8443"}, 8443, True, "https://[2001:db8::10]:8443/v1"),
        ({"https": "70000", "http": "8080"}, 8080, False, "http://[2001:db8::10]:8080/v1"),
    ],
)
def test_txt_http_port(props: dict[str, str], port: int, tls: bool, url: str) -> None:
    a = BoxAnnouncement.from_properties(props)
    assert (a.http_port, a.http_tls) == (port, tls)
    assert BoxAnnouncement.from_properties(a.properties()) == a
    box = DiscoveredBox("n", "h", ("2001:db8::10",), 1, a)
    assert box.openai_base_url == url
    assert box.to_json()["http_tls"] is tls


def test_discovery_config() -> None:
    empty = parse_discovery_config(TableReader({}, source="agent.toml", prefix="discovery."))
    assert empty == DiscoveryConfig()
    cfg = parse_discovery_config(
        TableReader(
            {"interfaces": ["192.0.2.2"], "instance_name": "line-3"},
            source="agent.toml",
            prefix="discovery.",
        )
    )
    assert cfg.interfaces == ("192.0.2.2",)
    assert cfg.instance_name == "line-3"
    with pytest.raises(ConfigError, match=r"discovery\.interfaces"):
        parse_discovery_config(
            TableReader({"interfaces": ["eth0"]}, source="agent.toml", prefix="discovery.")
        )
    with pytest.raises(ConfigError, match=r"discovery\.instance_name"):
        parse_discovery_config(
            TableReader({"instance_name": "a.b"}, source="agent.toml", prefix="discovery.")
        )
    with pytest.raises(ConfigError, match="unknown key"):
        parse_discovery_config(TableReader({"enable": True}, source="agent.toml"))


# -- what is advertised: only where the server really listens ----------------------------


LAN = ["192.0.2.10", "2001:db8::10"]


@pytest.mark.parametrize(
    ("listen", "interfaces", "expected"),
    [
        # Loopback or Unix only: nothing a LAN client could connect to.
        (["127.0.0.1:50051"], (), None),
        (["[::1]:50051", "unix:/run/edge-agent/admin.sock"], (), None),
        # A wildcard stands for every local address of its family ([::] is dual-stack).
        (["0.0.0.0:50051"], (), (["192.0.2.10"], 50051)),
        (["[::]:50051"], (), (["192.0.2.10", "2001:db8::10"], 50051)),
        # A specific address is published only if the host has it.
        (["192.0.2.10:7000"], (), (["192.0.2.10"], 7000)),
        (["198.51.100.9:7000"], (), None),
        # The first reachable listener wins; loopback before it is skipped.
        (["127.0.0.1:50051", "192.0.2.10:50060"], (), (["192.0.2.10"], 50060)),
        # [discovery] interfaces restricts what a wildcard publishes.
        (["0.0.0.0:50051"], ("192.0.2.10",), (["192.0.2.10"], 50051)),
        (["0.0.0.0:50051"], ("198.51.100.9",), None),
        # Naming a loopback address explicitly is a deliberate single-host set-up.
        (["127.0.0.1:50051"], ("127.0.0.1",), (["127.0.0.1"], 50051)),
        # A host name: which interface it binds is unknown, so nothing is claimed.
        (["box7.example:50051"], (), None),
    ],
)
def test_advertised_endpoint_matches_the_listeners(
    listen: list[str], interfaces: tuple[str, ...], expected: tuple[list[str], int] | None
) -> None:
    assert advertised_endpoint(listen, LAN, interfaces) == expected


@pytest.mark.parametrize(
    ("http_listen", "addresses", "interfaces", "expected"),
    [
        # Not configured, or loopback only while the box is advertised on the LAN.
        ([], ["192.0.2.10"], (), None),
        (["127.0.0.1:8080"], ["192.0.2.10"], (), None),
        # A wildcard or the advertised address itself: published.
        (["0.0.0.0:8443"], ["192.0.2.10"], (), "0.0.0.0:8443"),
        (["127.0.0.1:8080", "192.0.2.10:8443"], ["192.0.2.10"], (), "192.0.2.10:8443"),
        # It must answer on every advertised address: an IPv4-only listener does not
        # cover a box advertised on both families, a dual-stack one does.
        (["0.0.0.0:8443"], ["192.0.2.10", "2001:db8::10"], (), None),
        (["[::]:8443"], ["192.0.2.10", "2001:db8::10"], (), "[::]:8443"),
        # The single-host set-up of the tests: loopback named in [discovery] interfaces.
        (["127.0.0.1:8080"], ["127.0.0.1"], ("127.0.0.1",), "127.0.0.1:8080"),
    ],
)
def test_advertised_http_only_where_clients_connect(
    http_listen: list[str], addresses: list[str], interfaces: tuple[str, ...], expected: str | None
) -> None:
    assert advertised_http(http_listen, addresses, LAN, interfaces) == expected
