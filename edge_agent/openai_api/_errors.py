"""The one place where exceptions become HTTP statuses and OpenAI error envelopes.

An EdgeAgentError maps by its gRPC status (the canonical gRPC → HTTP table) and keeps its
client-facing message; a field error names the field in ``param``. Anything else is a bug:
logged with the request id, and the client gets 500 with only that id.
"""

from __future__ import annotations

import logging
import math

import grpc
from starlette.responses import Response

from edge_agent.errors import EdgeAgentError, InvalidArgument, NotFound, ResourceExhausted
from edge_agent.openai_api._schema import ErrorBody, ErrorEnvelope

__all__ = ["PayloadTooLarge", "UnknownEndpoint", "error_body", "error_response"]

_log = logging.getLogger(__name__)

# (HTTP status, OpenAI error type, code)
_BY_STATUS: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "failed_precondition"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", "invalid_value"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error", "cancelled"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
}


class PayloadTooLarge(EdgeAgentError):
    """The request body is over ``http.max_body_bytes`` (HTTP 413)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnknownEndpoint(NotFound):
    """No route has this method and path (a 404 that is not about a model)."""


def error_body(exc: BaseException, request_id: str) -> tuple[int, ErrorBody, dict[str, str]]:
    """(status, body, extra headers) for ``exc``."""
    if isinstance(exc, PayloadTooLarge):
        return 413, ErrorBody(message=exc.message, type="invalid_request_error"), {}
    if not isinstance(exc, EdgeAgentError):
        _log.error("unexpected error in an HTTP request (request id %s)", request_id, exc_info=exc)
        body = ErrorBody(message=f"internal error (request id {request_id})", type="server_error")
        return 500, body, {}
    status, kind, code = _BY_STATUS.get(exc.code, (500, "server_error", None))
    param = None
    if isinstance(exc, InvalidArgument):
        param = exc.field
    elif isinstance(exc, NotFound) and not isinstance(exc, UnknownEndpoint):
        param, code = "model", "model_not_found"
    headers = {}
    if isinstance(exc, ResourceExhausted) and exc.retry_after_ms is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_ms / 1000)))
    return status, ErrorBody(message=exc.message, type=kind, param=param, code=code), headers


def error_response(exc: BaseException, request_id: str) -> Response:
    status, body, headers = error_body(exc, request_id)
    headers["x-request-id"] = request_id
    return Response(
        ErrorEnvelope(error=body).model_dump_json(),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )
