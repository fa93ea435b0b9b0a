"""The daemon advertises its OpenAI-compatible API over mDNS: a real zeroconf browser on
loopback finds the port, and the openai SDK reaches the box through what it found."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from daemon_harness import start_agent, stop_agent
from http_harness import LOCAL_MODEL, http_config
from openai import OpenAI

from edge_agent.discovery import BoxBrowser, DiscoveredBox, DiscoveryConfig

LOOPBACK = ("127.0.0.1",)


def _ours(boxes: list[DiscoveredBox]) -> DiscoveredBox | None:
    return next((b for b in boxes if b.name.startswith("http-box")), None)


async def _browse() -> DiscoveredBox:
    async with BoxBrowser(interfaces=LOOPBACK) as browser:
        boxes = await browser.wait_for(lambda bs: _ours(bs) is not None, timeout_s=15)
    box = _ours(boxes)
    assert box is not None
    return box


def test_the_http_port_is_in_the_txt_record(tmp_path: Path) -> None:
    discovery = DiscoveryConfig(enabled=True, interfaces=LOOPBACK, instance_name="http-box")
    config = http_config(tmp_path, discovery=discovery)
    running, thread = start_agent(config)
    try:
        box = asyncio.run(_browse())
        grpc_port, http_port = running.agent.ports[0], running.agent.http_ports[0]
        assert box.port == grpc_port
        assert box.properties["http"] == str(http_port)  # plaintext: loopback
        assert "https" not in box.properties
        assert box.openai_base_url == f"http://127.0.0.1:{http_port}/v1"
        with OpenAI(base_url=box.openai_base_url, api_key="sk-any", max_retries=0) as client:
            assert client.models.list().data[0].id == LOCAL_MODEL
    finally:
        stop_agent(running, thread)


def test_no_http_key_when_the_api_is_off(tmp_path: Path) -> None:
    discovery = DiscoveryConfig(enabled=True, interfaces=LOOPBACK, instance_name="http-box-off")
    config = http_config(tmp_path, discovery=discovery)
    config = dataclasses.replace(config, http=dataclasses.replace(config.http, listen=()))
    running, thread = start_agent(config)
    try:

        async def browse() -> DiscoveredBox:
            async with BoxBrowser(interfaces=LOOPBACK) as browser:
                boxes = await browser.wait_for(
                    lambda bs: any(b.name.startswith("http-box-off") for b in bs), timeout_s=15
                )
            return next(b for b in boxes if b.name.startswith("http-box-off"))

        box = asyncio.run(browse())
        assert box.port == running.agent.ports[0]
        assert "http" not in box.properties and "https" not in box.properties
        assert box.openai_base_url is None
    finally:
        stop_agent(running, thread)
