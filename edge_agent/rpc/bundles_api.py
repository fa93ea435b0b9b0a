"""Operator RPCs for bundles: translate protobuf <-> BundleManager, nothing more.

Errors are EdgeAgentErrors raised by the domain; the server's ErrorInterceptor maps them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from edge_agent._proto.edge_agent.v1 import bundles_pb2
from edge_agent.bundles import (
    BundleInfo,
    BundleManager,
    UploadHeader,
    UploadReceiver,
    UploadSession,
)
from edge_agent.bundles._format import format_time
from edge_agent.errors import InvalidArgument

__all__ = ["BundlesApi", "bundle_info_to_proto"]


def bundle_info_to_proto(info: BundleInfo) -> bundles_pb2.BundleInfo:
    return bundles_pb2.BundleInfo(
        name=info.name,
        version=info.version,
        release=info.release,
        slot=info.slot,
        active=info.active,
        expires_at=format_time(info.expires_at) if info.expires_at else "",
        signer_key_ids=list(info.signer_key_ids),
    )


async def _open_shielded(uploads: UploadReceiver, header: UploadHeader) -> UploadSession:
    """Open in a thread; if the RPC is cancelled meanwhile, close what the thread opened."""
    fut = asyncio.ensure_future(asyncio.to_thread(uploads.open, header))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        fut.add_done_callback(_close_opened)
        raise


def _close_opened(fut: asyncio.Future[UploadSession]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


class BundlesApi:
    """The bundle half of the Operator service; the lead's OperatorServicer delegates here."""

    def __init__(
        self, manager: BundleManager, *, client_id: Callable[[], str] = lambda: "operator"
    ) -> None:
        self._manager = manager
        self._client_id = client_id  # who pushed or rolled back, for the audit log
        # Installs outlive a dropped client (shielded); keep them referenced until done.
        self._installs: set[asyncio.Task[Any]] = set()

    async def PushBundle(
        self, request_iterator: AsyncIterator[bundles_pb2.PushBundleRequest], context: Any
    ) -> bundles_pb2.PushBundleResponse:
        session: UploadSession | None = None
        activate = True
        source = self._client_id()
        try:
            async for msg in request_iterator:
                kind = msg.WhichOneof("item")
                if kind == "header":
                    if session is not None:
                        raise InvalidArgument("header", "sent twice")
                    h = msg.header
                    session = await _open_shielded(
                        self._manager.uploads,
                        UploadHeader(h.upload_id, h.total_size, h.sha256, h.offset),
                    )
                    activate = h.activate
                elif kind == "chunk":
                    if session is None:
                        raise InvalidArgument("header", "must come before the first chunk")
                    await asyncio.to_thread(session.write, msg.chunk)
                else:
                    raise InvalidArgument("item", "empty message")
            if session is None:
                raise InvalidArgument("header", "missing")
            archive = await asyncio.to_thread(session.finish)
        finally:
            if session is not None:
                await asyncio.to_thread(session.close)  # keep the partial file for a resume
        task = asyncio.create_task(
            self._manager.install_archive(
                archive,
                activate=activate,
                consume=True,
                source=source,
                name=f"upload {archive.stem}",
            )
        )
        self._installs.add(task)
        task.add_done_callback(self._installs.discard)
        result = await asyncio.shield(task)
        return bundles_pb2.PushBundleResponse(
            bundle=bundle_info_to_proto(result.bundle), outcome=result.outcome
        )

    async def GetUploadOffset(
        self, request: bundles_pb2.GetUploadOffsetRequest, context: Any
    ) -> bundles_pb2.GetUploadOffsetResponse:
        offset = await asyncio.to_thread(self._manager.uploads.offset, request.upload_id)
        return bundles_pb2.GetUploadOffsetResponse(
            offset=offset, max_chunk_bytes=self._manager.uploads.chunk_limit
        )

    async def ListBundles(
        self, request: bundles_pb2.ListBundlesRequest, context: Any
    ) -> bundles_pb2.ListBundlesResponse:
        infos = await asyncio.to_thread(self._manager.list_bundles)
        return bundles_pb2.ListBundlesResponse(
            bundles=[bundle_info_to_proto(i) for i in infos],
            problem=self._manager.fallback_reason or "",
        )

    async def RollbackBundle(
        self, request: bundles_pb2.RollbackBundleRequest, context: Any
    ) -> bundles_pb2.RollbackBundleResponse:
        info = await self._manager.rollback(source=self._client_id())
        return bundles_pb2.RollbackBundleResponse(bundle=bundle_info_to_proto(info))

    async def wait_installs(self) -> None:
        """For shutdown: let running installs settle (they are crash-safe if cut anyway)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._installs, return_exceptions=True)
