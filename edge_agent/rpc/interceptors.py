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

from edge_agent.errors import EdgeAgentError, InvalidArgument, ResourceExhausted

__all__ = ["ErrorInterceptor", "request_id"]

_log = logging.getLogger(__name__)

_REQUEST_ID_KEY = "x-request-id"


class _Malformed:
    """Stands in for a request whose bytes did not parse; the behaviour refuses it."""

    __slots__ = ()


_MALFORMED = _Malformed()


def _guard_deserializer(deserialize: Callable[[bytes], Any] | None) -> Any:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError, bad UTF-8 in a string field, ...: the caller's fault
            return _MALFORMED

    return parse


def _refuse_malformed(request: Any) -> None:
    if request is _MALFORMED:
        raise InvalidArgument("request", "is not a valid protobuf message of this method's type")


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for item in requests:
        _refuse_malformed(item)
        yield item


def _checked_request(request_or_iterator: Any) -> Any:
    if hasattr(request_or_iterator, "__aiter__"):
        return _checked(request_or_iterator)
    _refuse_malformed(request_or_iterator)
    return request_or_iterator


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
            return await behavior(_checked_request(request_or_iterator), context)
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
            async for item in behavior(_checked_request(request_or_iterator), context):
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
        if handler is None:
            return handler
        method = handler_call_details.method
        # Health and reflection (grpcio's own) are wrapped too: their requests can be
        # malformed like ours, and the wrapper adds nothing else to a call that succeeds.
        kwargs = {
            "request_deserializer": _guard_deserializer(handler.request_deserializer),
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
