"""Client side of ``edge-agent bundle push|list|rollback``: the one bundles module on _proto.

``push`` streams the archive in chunks; after a dropped connection it asks the box for the
offset it holds (``GetUploadOffset``) and resumes from there. The upload id is the archive's
sha256, so re-running the same command after a crash of the operator's laptop resumes too.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm  # type: ignore[import-untyped]

from edge_agent._operator_cli import OperatorTarget
from edge_agent._proto.edge_agent.v1 import bundles_pb2, operator_pb2_grpc
from edge_agent.client._operator_channel import (
    open_operator_channel,
    operator_metadata,
    rpc_error,
)
from edge_agent.errors import BundleError, EdgeAgentError, FailedPrecondition, InvalidArgument

__all__ = ["PushOutcome", "list_remote", "list_remote_state", "push_archive", "rollback_remote"]

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}


@dataclass(frozen=True, slots=True)
class PushOutcome:
    outcome: str
    bundle: dict[str, Any]
    bytes_sent: int
    attempts: int


def _error(exc: grpc.RpcError) -> EdgeAgentError:
    return rpc_error(exc, refused=BundleError, invalid_field="push")


def _info(b: bundles_pb2.BundleInfo) -> dict[str, Any]:
    return {
        "name": b.name,
        "version": b.version,
        "release": b.release,
        "slot": b.slot,
        "active": b.active,
        "expires_at": b.expires_at or None,
        "signer_key_ids": list(b.signer_key_ids),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


def push_archive(
    target: OperatorTarget,
    archive: Path,
    *,
    activate: bool = True,
    chunk_bytes: int = 1024 * 1024,
    max_attempts: int = 8,
    progress: bool = True,
    install_timeout_s: float = 3600.0,
    sleep: Callable[[float], None] = time.sleep,
) -> PushOutcome:
    """Upload ``archive``; resumes after drops; returns what the box answered."""
    try:
        total = archive.stat().st_size
    except OSError as exc:
        raise InvalidArgument("archive", "cannot be read") from exc
    digest = _sha256(archive)
    meta = operator_metadata(target)
    sent = 0
    reached = False  # retries are for a dropped upload; an unreachable box fails at once
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="push", disable=not progress)
    try:
        for attempt in range(1, max_attempts + 1):
            with open_operator_channel(target) as channel:
                stub = operator_pb2_grpc.OperatorStub(channel)
                try:
                    answer = stub.GetUploadOffset(
                        bundles_pb2.GetUploadOffsetRequest(upload_id=digest),
                        timeout=target.timeout_s,
                        metadata=meta,
                    )
                    reached = True
                    offset = answer.offset
                    size = min(chunk_bytes, answer.max_chunk_bytes or chunk_bytes)
                    bar.n = offset
                    bar.refresh()
                    header = bundles_pb2.BundleUploadHeader(
                        upload_id=digest,
                        total_size=total,
                        sha256=digest,
                        offset=offset,
                        activate=activate,
                    )
                    counter = [0]

                    def requests(
                        header: bundles_pb2.BundleUploadHeader = header,
                        counter: list[int] = counter,
                        size: int = size,
                    ) -> Iterator[bundles_pb2.PushBundleRequest]:
                        yield bundles_pb2.PushBundleRequest(header=header)
                        with archive.open("rb") as f:
                            f.seek(header.offset)
                            while chunk := f.read(size):
                                counter[0] += len(chunk)
                                bar.update(len(chunk))
                                yield bundles_pb2.PushBundleRequest(chunk=chunk)

                    try:
                        resp = stub.PushBundle(requests(), timeout=install_timeout_s, metadata=meta)
                    finally:
                        sent += counter[0]
                except grpc.RpcError as exc:
                    code = exc.code() if isinstance(exc, grpc.Call) else None
                    if not reached:
                        raise _error(exc) from exc
                    if code in _RETRYABLE and attempt < max_attempts:
                        sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
                        continue
                    raise _error(exc) from exc
            return PushOutcome(resp.outcome, _info(resp.bundle), sent, attempt)
    finally:
        bar.close()
    raise FailedPrecondition("push did not complete")  # unreachable: the loop returns or raises


def list_remote(target: OperatorTarget) -> list[dict[str, Any]]:
    return list_remote_state(target)[0]


def list_remote_state(target: OperatorTarget) -> tuple[list[dict[str, Any]], str]:
    """The installed bundles, and why the box serves none of them ("" when it does)."""
    with open_operator_channel(target) as channel:
        try:
            resp = operator_pb2_grpc.OperatorStub(channel).ListBundles(
                bundles_pb2.ListBundlesRequest(),
                timeout=target.timeout_s,
                metadata=operator_metadata(target),
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
    return [_info(b) for b in resp.bundles], resp.problem


def rollback_remote(target: OperatorTarget, *, timeout_s: float = 3600.0) -> dict[str, Any]:
    with open_operator_channel(target) as channel:
        try:
            resp = operator_pb2_grpc.OperatorStub(channel).RollbackBundle(
                bundles_pb2.RollbackBundleRequest(),
                timeout=timeout_s,
                metadata=operator_metadata(target),
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
    return _info(resp.bundle)
