"""The Inference servicer: translation only; the work is done by the domain managers."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from grpc import aio

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc
from edge_agent.chat import CallContext, ChatChunk, ChatSpec
from edge_agent.config import EngineConfig
from edge_agent.rpc.convert import chat_spec_from_proto, chunk_to_proto
from edge_agent.rpc.interceptors import request_id

__all__ = ["ChatHandler", "InferenceApi"]

ChatHandler = Callable[[ChatSpec, CallContext], AsyncIterator[ChatChunk]]
ClientIdentity = Callable[[], str]
StatusProvider = Callable[[], pb.GetStatusResponse]
ModelsProvider = Callable[[], list[pb.ModelInfo]]


class InferenceApi(pb_grpc.InferenceServicer):
    def __init__(
        self,
        chat: ChatHandler,
        status: StatusProvider,
        models: ModelsProvider,
        limits: EngineConfig,
        client_id: ClientIdentity = lambda: "anonymous",
    ) -> None:
        self._chat = chat
        self._client_id = client_id
        self._status = status
        self._models = models
        self._limits = limits

    async def Chat(
        self, request: pb.ChatRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ChatResponse]:
        spec = chat_spec_from_proto(request, self._limits)
        rid = request_id(context)
        remaining = context.time_remaining()
        call = CallContext(
            client_id=self._client_id(),
            request_id=rid,
            deadline=time.monotonic() + remaining if remaining is not None else None,
        )
        response_id = f"chat-{uuid.uuid4().hex[:24]}"
        # Leaving this loop (client gone, deadline) closes the stream, which cancels the work.
        stream = self._chat(spec, call)
        try:
            async for chunk in stream:
                yield chunk_to_proto(chunk, response_id)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def ListModels(
        self, request: pb.ListModelsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self._models())

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetStatusResponse:
        return self._status()
