"""A small typed client for the Inference service, async and sync."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from grpc import aio

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc
from edge_agent.chat import ChatChunk
from edge_agent.client._convert import ChatOptions, MessageLike, build_request, chunk_from_proto

__all__ = ["AsyncClient", "Client"]

Messages = Sequence[MessageLike]


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class AsyncClient:
    """``async with AsyncClient("127.0.0.1:50051") as c: async for chunk in c.chat(...)``."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if credentials is None:
            self._channel = aio.insecure_channel(target, options=list(options))
        else:
            self._channel = aio.secure_channel(target, credentials, options=list(options))
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._metadata = _metadata(token)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def chat(
        self,
        messages: Messages,
        options: ChatOptions = ChatOptions(),  # noqa: B008 (frozen, safe as default)
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[ChatChunk]:
        call = self._stub.Chat(
            build_request(messages, options), timeout=timeout, metadata=self._metadata
        )
        try:
            async for response in call:
                yield chunk_from_proto(response)
        finally:
            call.cancel()

    async def list_models(self, *, timeout: float | None = 10) -> list[pb.ModelInfo]:
        response = await self._stub.ListModels(
            pb.ListModelsRequest(), timeout=timeout, metadata=self._metadata
        )
        return list(response.models)

    async def status(self, *, timeout: float | None = 10) -> pb.GetStatusResponse:
        response: pb.GetStatusResponse = await self._stub.GetStatus(
            pb.GetStatusRequest(), timeout=timeout, metadata=self._metadata
        )
        return response


class Client:
    """The blocking twin of :class:`AsyncClient`."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.secure_channel(target, credentials, options=list(options))
        self._stub = pb_grpc.InferenceStub(self._channel)
        self._metadata = _metadata(token)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def chat(
        self,
        messages: Messages,
        options: ChatOptions = ChatOptions(),  # noqa: B008
        *,
        timeout: float | None = None,
    ) -> Iterator[ChatChunk]:
        call = self._stub.Chat(
            build_request(messages, options), timeout=timeout, metadata=self._metadata
        )
        try:
            for response in call:
                yield chunk_from_proto(response)
        finally:
            call.cancel()

    def list_models(self, *, timeout: float | None = 10) -> list[pb.ModelInfo]:
        response = self._stub.ListModels(
            pb.ListModelsRequest(), timeout=timeout, metadata=self._metadata
        )
        return list(response.models)

    def status(self, *, timeout: float | None = 10) -> pb.GetStatusResponse:
        response: pb.GetStatusResponse = self._stub.GetStatus(
            pb.GetStatusRequest(), timeout=timeout, metadata=self._metadata
        )
        return response
