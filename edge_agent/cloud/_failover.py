"""Splice a cloud stream and a local fallback into one stream that never hangs.

* The cloud fails (any ``CloudError``, or no first token within ``first_token_timeout_s``)
  before its first token: the local stream is started from scratch and the client sees only
  local chunks. Nothing was shown, so this is transparent.
* The cloud fails after its first token (an error, a cut, no chunk within
  ``inter_chunk_timeout_s``, or it has not finished by ``cloud_deadline``): mode
  ``continue_local`` starts the local stream with the text produced so far (the engine
  continues the assistant turn from it); mode ``fail`` ends the stream with
  ``CloudStreamInterrupted`` so the client knows the answer is incomplete.

The helper is generic over the chunk type: it reads only ``delta`` and ``finish_reason``,
so the chat path splices its own ``ChatChunk`` streams and the router client's tests its
``StreamChunk`` ones; which side produced a chunk is the producer's to say (provenance). The
cloud iterator is always closed (its connection released) before the local one starts.
Errors that are not ``CloudError`` (bugs) propagate unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from edge_agent.cloud._client import OutcomeObserver
from edge_agent.cloud._config import FailoverMode
from edge_agent.cloud._errors import (
    CloudRouterError,
    CloudStreamCut,
    CloudStreamInterrupted,
    CloudTimeout,
)
from edge_agent.errors import CloudError

__all__ = ["Chunk", "FailoverEvent", "LocalStreamFactory", "failover_stream"]


class Chunk(Protocol):
    """What failover reads of a chunk: its text and whether it ends the answer."""

    @property
    def delta(self) -> str: ...

    @property
    def finish_reason(self) -> str | None: ...


C = TypeVar("C", bound=Chunk)

# Starts the local answer; its argument is the cloud text already streamed ("" if none).
LocalStreamFactory = Callable[[str], AsyncIterator[C]]


@dataclass(frozen=True, slots=True)
class FailoverEvent:
    """What happened, for the audit log and metrics (no answer text)."""

    stage: Literal["before_first_token", "mid_stream"]
    kind: str
    action: Literal["local", "fail"]
    cloud_chunks: int
    cloud_chars: int


def _kind(error: CloudError) -> str:
    return error.kind if isinstance(error, CloudRouterError) else "cloud"


async def _aclose(iterator: AsyncIterator[object]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def failover_stream(
    cloud: AsyncIterator[C],
    local: LocalStreamFactory[C],
    *,
    mode: FailoverMode,
    first_token_timeout_s: float,
    inter_chunk_timeout_s: float,
    on_failover: Callable[[FailoverEvent], None] | None = None,
    observer: OutcomeObserver | None = None,
    cloud_deadline: float | None = None,
) -> AsyncGenerator[C, None]:
    """One stream from ``cloud``, falling back to ``local(text_so_far)`` as described above.

    ``cloud_deadline`` (a ``loop.time()`` instant) is when the cloud must have finished so
    that the local model can still answer before the client's deadline; the caller budgets
    it. The local stream is not put under these deadlines: the engine supervisor and the
    call's own deadline govern it. ``observer`` (the connectivity monitor) is told about
    failures only this helper can see (its own deadlines, an early end); the router client
    reports the others itself. A mid-stream cut at ``cloud_deadline`` is not reported: the
    router was answering, just not fast enough for this client.
    """
    loop = asyncio.get_running_loop()
    first_deadline = loop.time() + first_token_timeout_s
    if cloud_deadline is not None:
        first_deadline = min(first_deadline, cloud_deadline)
    parts: list[str] = []
    failure: CloudError | None = None
    own_failure = False
    try:
        while True:
            limit = first_deadline if not parts else loop.time() + inter_chunk_timeout_s
            out_of_time = cloud_deadline is not None and cloud_deadline <= limit
            if out_of_time and cloud_deadline is not None:
                limit = cloud_deadline
            try:
                async with asyncio.timeout_at(limit):
                    chunk = await anext(cloud)
            except StopAsyncIteration:
                failure = CloudStreamCut("the cloud stream ended without finishing")
                own_failure = True
                break
            except TimeoutError:
                if not parts:
                    failure = CloudTimeout("the cloud gave no first token in time")
                elif out_of_time:
                    failure = CloudTimeout("the cloud answer would not finish before the deadline")
                else:
                    failure = CloudTimeout("the cloud stream stalled between chunks")
                own_failure = not (parts and out_of_time)
                break
            except CloudError as exc:
                failure = exc
                break
            if chunk.delta:
                parts.append(chunk.delta)
            yield chunk
            if chunk.finish_reason is not None:
                return
    finally:
        await _aclose(cloud)

    assert failure is not None  # every path out of the loop without return sets it
    if own_failure and observer is not None:
        observer.record_failure(_kind(failure))
    text = "".join(parts)
    stage: Literal["before_first_token", "mid_stream"] = (
        "mid_stream" if parts else "before_first_token"
    )
    action: Literal["local", "fail"] = "fail" if parts and mode == "fail" else "local"
    if on_failover is not None:
        on_failover(
            FailoverEvent(
                stage=stage,
                kind=_kind(failure),
                action=action,
                cloud_chunks=len(parts),
                cloud_chars=len(text),
            )
        )
    if action == "fail":
        raise CloudStreamInterrupted(
            f"the cloud answer was interrupted after {len(text)} characters "
            f"({_kind(failure)}); it is incomplete"
        ) from failure
    fallback = local(text)
    try:
        async for chunk in fallback:
            yield chunk
    finally:
        await _aclose(fallback)
