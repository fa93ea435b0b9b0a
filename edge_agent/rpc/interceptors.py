"""The one place where exceptions become gRPC statuses.

An EdgeAgentError becomes its own status code and client-facing message (RESOURCE_EXHAUSTED
also gets a ``grpc-retry-pushback-ms`` trailer). Anything else is a bug: it is logged with
the request id and the client gets INTERNAL with only that id, never the exception text.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from edge_agent.errors import EdgeAgentError, ResourceExhausted

__all__ = ["ErrorInterceptor", "request_id"]

_log = logging.getLogger(__name__)

_REQUEST_ID_KEY = "x-request-id"


def request_id(context: aio.ServicerContext[Any, Any]) -> str:
    """The caller's request id (when it is a sane token) or a fresh one."""
    for key, value in context.invocation_metadata() or ():
        if (
            key == _REQUEST_ID_KEY
            and isinstance(value, str)
            and 0 < len(value) <= 64
            and value.replace("-", "").isalnum()
        ):
            return value
    return uuid.uuid4().hex


async def _abort(
    context: aio.ServicerContext[Any, Any], exc: BaseException, rid: str, method: str
) -> None:
    if isinstance(exc, EdgeAgentError):
        if isinstance(exc, ResourceExhausted) and exc.retry_after_ms is not None:
            context.set_trailing_metadata(
                (("grpc-retry-pushback-ms", str(max(0, int(exc.retry_after_ms)))),)
            )
        await context.abort(exc.code, exc.message)
    _log.exception("unexpected error in %s (request id %s)", method, rid, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Any]:
    async def wrapper(request_or_iterator: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        rid = request_id(context)
        try:
            return await behavior(request_or_iterator, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, rid, method)

    return wrapper


def _wrap_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapper(
        request_or_iterator: Any, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        rid = request_id(context)
        try:
            async for item in behavior(request_or_iterator, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, rid, method)

    return wrapper


class ErrorInterceptor(aio.ServerInterceptor):
    """Maps the error tree to statuses for every RPC of the server."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # Health and reflection come from grpcio and raise no errors of ours.
        if handler is None or not method.startswith("/edge_agent."):
            return handler
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method), **kwargs
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method), **kwargs
            )
        return handler
