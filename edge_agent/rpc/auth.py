"""The auth + rate-limit server interceptor.

It runs before every servicer: proves who the caller is (``edge_agent.tls.Authenticator``),
checks the method's required role, spends one token of the caller's bucket, and then runs
the servicer with :func:`edge_agent.tls.current_identity` set. Refusals abort the call with
UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED (plus a ``grpc-retry-pushback-ms``
trailer) before any servicer code runs.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

import grpc

from edge_agent.errors import EdgeAgentError, PermissionDenied, Unauthenticated
from edge_agent.tls import ROLES, Authenticator, Identity, RateLimiter, Role, role_allows
from edge_agent.tls._identity import _reset_identity, _set_identity

__all__ = ["DEFAULT_METHOD_ROLES", "PUBLIC", "AuthInterceptor", "MethodRoles"]

_log = logging.getLogger("edge_agent.auth")

PUBLIC: Final = "public"
"""Marker for methods anyone may call, authenticated or not (health, reflection)."""

DEFAULT_METHOD_ROLES: tuple[tuple[str, Role | str], ...] = (
    ("/edge_agent.v1.Inference/", "client"),
    ("/edge_agent.v1.Operator/", "operator"),
    ("/grpc.health.v1.Health/", PUBLIC),
    ("/grpc.reflection.v1alpha.ServerReflection/", PUBLIC),
    ("/grpc.reflection.v1.ServerReflection/", PUBLIC),
)
PUSHBACK_KEY: Final = "grpc-retry-pushback-ms"


class MethodRoles:
    """Maps a full method name to the role it needs, by longest matching prefix.

    A method no prefix covers is refused for everyone: a new service must be mapped
    explicitly rather than be open by accident.
    """

    def __init__(self, table: Sequence[tuple[str, Role | str]] = DEFAULT_METHOD_ROLES) -> None:
        for prefix, role in table:
            if role not in ("client", "operator", "admin", PUBLIC):
                raise ValueError(f"unknown role {role!r} for {prefix!r}")
        self._table = sorted(table, key=lambda item: len(item[0]), reverse=True)

    def required(self, method: str) -> Role | str | None:
        for prefix, role in self._table:
            if method.startswith(prefix):
                return role
        return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, authorizes and rate-limits every call."""

    def __init__(
        self,
        authenticator: Authenticator,
        limiter: RateLimiter,
        method_roles: MethodRoles | None = None,
    ) -> None:
        self._authn = authenticator
        self._limiter = limiter
        self._roles = method_roles or MethodRoles()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: gRPC answers UNIMPLEMENTED
        method: str = handler_call_details.method
        required = self._roles.required(method)
        if required == PUBLIC:
            return handler

        async def admit(context: grpc.aio.ServicerContext[Any, Any]) -> Identity:
            return await self._admit(method, required, context)

        return _wrap(handler, admit)

    async def _admit(
        self,
        method: str,
        required: Role | str | None,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Identity:
        try:
            identity = self._authn.authenticate(
                peer=context.peer(),
                auth_context=context.auth_context(),
                metadata=context.invocation_metadata() or (),
            )
            if identity is None:
                raise Unauthenticated("authentication required (client certificate or token)")
            if required not in ROLES:
                raise PermissionDenied("this method is not open to any role")
            if not role_allows(identity.role, required):
                raise PermissionDenied(f"the {required} role is required")
        except EdgeAgentError as exc:
            _log.info("refused %s: %s", method, exc.message)
            await context.abort(exc.code, exc.message)
            raise AssertionError("context.abort returned") from None
        pushback_ms = self._limiter.check(identity)
        if pushback_ms:
            _log.info("rate limited %s for %s", method, identity.client_id)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "rate limit exceeded; retry later",
                trailing_metadata=((PUSHBACK_KEY, str(pushback_ms)),),
            )
        return identity


Admit = Callable[["grpc.aio.ServicerContext[Any, Any]"], Awaitable[Identity]]


async def _call(behavior: Callable[..., Any], request: Any, context: Any) -> Any:
    result = behavior(request, context)
    if inspect.isawaitable(result):
        result = await result
    return result


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], admit: Admit
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with ``admit`` run first and the identity set for the servicer."""
    streaming_response = handler.response_streaming
    behavior: Any
    factory: Any
    if handler.request_streaming and streaming_response:
        behavior, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif streaming_response:
        behavior, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behavior, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler

    if streaming_response and inspect.isasyncgenfunction(behavior):

        async def wrapped_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            token = _set_identity(await admit(context))
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                # A cancelled stream is closed by grpcio from another task, whose context
                # did not set the token; the call's own context ends with it anyway.
                with contextlib.suppress(ValueError):
                    _reset_identity(token)

        new_behavior: Callable[..., Any] = wrapped_stream
    else:

        async def wrapped(request: Any, context: Any) -> Any:
            token = _set_identity(await admit(context))
            try:
                return await _call(behavior, request, context)
            finally:
                _reset_identity(token)

        new_behavior = wrapped

    wrapped_handler: grpc.RpcMethodHandler[Any, Any] = factory(
        new_behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return wrapped_handler
