"""BundlesApi behind a real grpc.aio server on loopback, driven by the real push client."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_fixtures import FileHost, Fleet, make_folder, small_config

from edge_agent._operator_cli import OperatorTarget
from edge_agent._proto.edge_agent.v1 import bundles_pb2, operator_pb2_grpc
from edge_agent.bundles import BundleManager
from edge_agent.bundles._push_client import list_remote, push_archive, rollback_remote
from edge_agent.errors import EdgeAgentError
from edge_agent.rpc.bundles_api import BundlesApi
from edge_agent.rpc.interceptors import ErrorInterceptor


class _Operator(operator_pb2_grpc.OperatorServicer):
    """Test glue: the lead's OperatorServicer delegates these four methods the same way."""

    def __init__(self, api: BundlesApi) -> None:
        self.api = api

    async def PushBundle(self, request_iterator: Any, context: Any) -> Any:
        return await self.api.PushBundle(request_iterator, context)

    async def GetUploadOffset(self, request: Any, context: Any) -> Any:
        return await self.api.GetUploadOffset(request, context)

    async def ListBundles(self, request: Any, context: Any) -> Any:
        return await self.api.ListBundles(request, context)

    async def RollbackBundle(self, request: Any, context: Any) -> Any:
        return await self.api.RollbackBundle(request, context)

    # The policy/credential RPCs belong to other areas; this test server does not serve them.
    async def PushPolicy(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by this test")

    async def PushCredentials(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by this test")

    async def GetDeviceIdentity(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served by this test")


class Box:
    def __init__(self, manager: BundleManager, host: FileHost, port: int) -> None:
        self.manager = manager
        self.host = host
        self.target = OperatorTarget(address=f"127.0.0.1:{port}", insecure=True, timeout_s=30)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[tuple[Box, Fleet]]:
    fleet = Fleet(tmp_path / "fleet")
    host = FileHost()
    manager = BundleManager(small_config(), state_dir=tmp_path / "state", host=host)
    fleet.trust(manager.trust.path, "ops1")
    manager.recover()
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    operator_pb2_grpc.add_OperatorServicer_to_server(_Operator(BundlesApi(manager)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Box(manager, host, port), fleet
    finally:
        await server.stop(1)


def _archive(fleet: Fleet, tmp: Path, release: int, size: int = 300_000) -> Path:
    payload = bytes(i * 7 % 251 for i in range(size))
    return fleet.archive(fleet.sign(make_folder(tmp, release, payload=payload), "ops1"))


async def test_push_list_rollback(box: tuple[Box, Fleet], tmp_path: Path) -> None:
    b, fleet = box
    out = await asyncio.to_thread(
        push_archive, b.target, _archive(fleet, tmp_path / "1", 1), progress=False
    )
    assert out.outcome == "activated"
    assert out.bundle["release"] == 1
    assert out.bundle["signer_key_ids"] == [fleet.key("ops1").key_id]
    await asyncio.to_thread(
        push_archive, b.target, _archive(fleet, tmp_path / "2", 2), progress=False
    )
    listed = await asyncio.to_thread(list_remote, b.target)
    assert [(x["release"], x["active"]) for x in listed] == [(2, True), (1, False)]
    back = await asyncio.to_thread(rollback_remote, b.target)
    assert back["release"] == 1
    assert b.host.active_release == 1
    assert not any(b.manager.store.uploads.iterdir())  # the consumed upload is gone


async def test_refusal_reaches_the_client_as_failed_precondition(
    box: tuple[Box, Fleet], tmp_path: Path
) -> None:
    b, fleet = box
    folder = fleet.sign(make_folder(tmp_path / "r", 1), "rogue")
    with pytest.raises(EdgeAgentError, match=r"FAILED_PRECONDITION: refused.*unknown-key"):
        await asyncio.to_thread(push_archive, b.target, fleet.archive(folder), progress=False)
    assert b.manager.list_bundles() == []
    assert not any(b.manager.store.uploads.iterdir())  # a refused upload is not kept


async def test_resume_after_a_dropped_stream(box: tuple[Box, Fleet], tmp_path: Path) -> None:
    b, fleet = box
    archive = _archive(fleet, tmp_path / "1", 1, size=2_000_000)
    data = archive.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    chunk = 64 * 1024

    def dropped() -> Iterator[bundles_pb2.PushBundleRequest]:
        header = bundles_pb2.BundleUploadHeader(
            upload_id=digest, total_size=len(data), sha256=digest, offset=0, activate=True
        )
        yield bundles_pb2.PushBundleRequest(header=header)
        for i in range(0, 10 * chunk, chunk):
            yield bundles_pb2.PushBundleRequest(chunk=data[i : i + chunk])
        deadline = time.monotonic() + 20
        while b.manager.uploads.offset(digest) < 2 * chunk and time.monotonic() < deadline:
            time.sleep(0.01)  # let some bytes land on the box before the cable is pulled
        raise ConnectionError("cable pulled")  # the client dies mid-stream

    def first_attempt() -> None:
        with grpc.insecure_channel(b.target.address) as ch:
            stub = operator_pb2_grpc.OperatorStub(ch)
            with pytest.raises(grpc.RpcError):
                stub.PushBundle(dropped(), timeout=30)

    await asyncio.to_thread(first_attempt)
    for _ in range(100):  # the box notices the drop asynchronously
        if not b.manager.uploads._open_ids:
            break
        await asyncio.sleep(0.05)
    kept = b.manager.uploads.offset(digest)
    out = await asyncio.to_thread(push_archive, b.target, archive, progress=False)
    assert out.outcome == "activated"
    # Only the missing tail travelled the second time (the box kept what had arrived).
    assert kept > 0
    assert out.bytes_sent == len(data) - kept


async def test_push_with_wrong_digest_is_refused(box: tuple[Box, Fleet], tmp_path: Path) -> None:
    b, fleet = box
    data = _archive(fleet, tmp_path / "1", 1).read_bytes()

    def lying() -> Iterator[bundles_pb2.PushBundleRequest]:
        header = bundles_pb2.BundleUploadHeader(
            upload_id="liar", total_size=len(data), sha256="0" * 64, activate=True
        )
        yield bundles_pb2.PushBundleRequest(header=header)
        for i in range(0, len(data), 60_000):
            yield bundles_pb2.PushBundleRequest(chunk=data[i : i + 60_000])

    def call() -> grpc.StatusCode:
        with grpc.insecure_channel(b.target.address) as ch:
            try:
                operator_pb2_grpc.OperatorStub(ch).PushBundle(lying(), timeout=30)
            except grpc.RpcError as exc:
                assert "does not match its digest" in (exc.details() or "")
                return exc.code()
        return grpc.StatusCode.OK

    assert await asyncio.to_thread(call) == grpc.StatusCode.INVALID_ARGUMENT
    assert b.manager.uploads.offset("liar") == 0
    assert b.manager.list_bundles() == []
