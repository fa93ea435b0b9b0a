"""Errors of the cloud route, and the one place where httpx errors become ours.

    CloudError                         (edge_agent.errors; UNAVAILABLE)
    └── CloudRouterError               (base of this package's errors: ``kind``, ``status``)
        ├── CloudDisabled              (FAILED_PRECONDITION; air-gapped or no credential)
        ├── CloudAuthError             (401: the router refused the token)
        ├── CloudPaymentRequired       (402: not enough balance; RESOURCE_EXHAUSTED)
        ├── CloudForbidden             (403: the token may not call this)
        ├── CloudModelNotFound         (404: unknown model or provider; NOT_FOUND)
        ├── CloudBadRequest            (400/413/422: refused as invalid; INVALID_ARGUMENT)
        ├── CloudModelUnavailable      (400 ``model_not_supported``: no enabled provider
        │                               serves the model; FAILED_PRECONDITION, not the
        │                               client's fault)
        ├── CloudRateLimited           (429; RESOURCE_EXHAUSTED; retry_after_s when sent)
        ├── CloudServerError           (5xx)
        ├── CloudHTTPError             (any other unexpected status)
        ├── CloudProtocolError         (malformed SSE or JSON, unexpected content type)
        │   └── CloudStreamCut         (the stream ended before it finished)
        ├── CloudStreamError           (the router sent an ``error`` object inside the stream)
        ├── CloudTimeout               (connect/read/write/pool, idle-between-events, total)
        ├── CloudConnectError          (refused, unreachable, TLS or proxy failure)
        └── CloudStreamInterrupted     (failover mode "fail": cut after the first token)

Each class has a short machine-readable ``kind`` that the connectivity monitor and the audit
log use. Messages never contain the token, headers or internal paths; upstream messages are
truncated and scrubbed before they are quoted.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping

import grpc
import httpx

from edge_agent.errors import CloudError

__all__ = [
    "HTTPX_ERROR_MAP",
    "CloudAuthError",
    "CloudBadRequest",
    "CloudConnectError",
    "CloudDisabled",
    "CloudForbidden",
    "CloudHTTPError",
    "CloudModelNotFound",
    "CloudModelUnavailable",
    "CloudPaymentRequired",
    "CloudProtocolError",
    "CloudRateLimited",
    "CloudRouterError",
    "CloudServerError",
    "CloudStreamCut",
    "CloudStreamError",
    "CloudStreamInterrupted",
    "CloudTimeout",
    "error_for_status",
    "error_in_stream",
    "map_httpx_error",
    "parse_retry_after",
    "upstream_message",
]

_MAX_QUOTED = 200


class CloudRouterError(CloudError):
    """Base of the cloud route's errors; ``kind`` names the failure for breaker and audit."""

    kind = "cloud"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CloudDisabled(CloudRouterError):
    """The cloud route is off: air-gapped, or no credential is loaded."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    kind = "disabled"


class CloudAuthError(CloudRouterError):
    """The router refused the token (401) or the token is unusable."""

    kind = "auth"


class CloudPaymentRequired(CloudRouterError):
    """The account has not enough balance (402)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "account_exhausted"


class CloudForbidden(CloudRouterError):
    """The token may not make this call (403)."""

    kind = "forbidden"


class CloudModelNotFound(CloudRouterError):
    """The model or provider is unknown to the router (404)."""

    code = grpc.StatusCode.NOT_FOUND
    kind = "not_found"


class CloudBadRequest(CloudRouterError):
    """The router refused the request as invalid (400, 413, 422)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "bad_request"


class CloudModelUnavailable(CloudRouterError):
    """No provider the account has enabled serves this model (400 ``model_not_supported``).

    The model comes from the fleet's policy, not from the client, so this is a condition
    of the box's configuration (FAILED_PRECONDITION), not an invalid argument.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION
    kind = "model_unavailable"


class CloudRateLimited(CloudRouterError):
    """The router is rate limiting us (429); ``retry_after_s`` is set when it said how long."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float | None, status: int = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s
        # Same attribute name as edge_agent.errors.ResourceExhausted, for the rpc interceptor.
        self.retry_after_ms = None if retry_after_s is None else math.ceil(retry_after_s * 1000)


class CloudServerError(CloudRouterError):
    """The router or the provider behind it failed (5xx)."""

    kind = "server"


class CloudHTTPError(CloudRouterError):
    """The router answered with a status we do not expect."""

    kind = "http"


class CloudProtocolError(CloudRouterError):
    """The router's answer was not the protocol we speak (malformed SSE or JSON)."""

    kind = "protocol"


class CloudStreamCut(CloudProtocolError):
    """The stream ended before the router said it finished."""

    kind = "cut"


class CloudStreamError(CloudRouterError):
    """The router reported an error object inside the stream."""

    kind = "stream"


class CloudTimeout(CloudRouterError):
    """A connect, read, write, pool, idle or total deadline passed."""

    kind = "timeout"


class CloudConnectError(CloudRouterError):
    """The router could not be reached (refused, unreachable, TLS, proxy)."""

    kind = "connect"


class CloudStreamInterrupted(CloudRouterError):
    """The cloud stream failed after the first token and failover mode is ``fail``."""

    kind = "interrupted"


# Every exception class httpx exports, mapped explicitly (test_cloud_errors enumerates httpx
# and fails when an upgrade adds one that is missing here).
HTTPX_ERROR_MAP: Mapping[type[Exception], tuple[type[CloudRouterError], str]] = {
    httpx.ConnectTimeout: (CloudTimeout, "connecting to the cloud router timed out"),
    httpx.ReadTimeout: (CloudTimeout, "the cloud router stopped sending data"),
    httpx.WriteTimeout: (CloudTimeout, "sending the request to the cloud router timed out"),
    httpx.PoolTimeout: (CloudTimeout, "no connection to the cloud router was free in time"),
    httpx.TimeoutException: (CloudTimeout, "the cloud router timed out"),
    httpx.ConnectError: (CloudConnectError, "the cloud router could not be reached"),
    httpx.ReadError: (CloudConnectError, "the connection to the cloud router failed"),
    httpx.WriteError: (CloudConnectError, "the connection to the cloud router failed"),
    httpx.CloseError: (CloudConnectError, "the connection to the cloud router failed"),
    httpx.NetworkError: (CloudConnectError, "the connection to the cloud router failed"),
    httpx.ProxyError: (CloudConnectError, "the proxy to the cloud router failed"),
    httpx.UnsupportedProtocol: (CloudConnectError, "the cloud router URL is not usable"),
    httpx.InvalidURL: (CloudConnectError, "the cloud router URL is not usable"),
    httpx.RemoteProtocolError: (CloudStreamCut, "the cloud router broke the HTTP protocol"),
    httpx.LocalProtocolError: (CloudProtocolError, "the request could not be encoded"),
    httpx.ProtocolError: (CloudProtocolError, "HTTP protocol error talking to the cloud router"),
    httpx.TransportError: (CloudConnectError, "the connection to the cloud router failed"),
    httpx.DecodingError: (CloudProtocolError, "the cloud router's answer could not be decoded"),
    httpx.TooManyRedirects: (CloudProtocolError, "the cloud router redirected too often"),
    httpx.RequestError: (CloudConnectError, "the request to the cloud router failed"),
    httpx.HTTPStatusError: (CloudHTTPError, "the cloud router answered with an error status"),
    httpx.HTTPError: (CloudConnectError, "the request to the cloud router failed"),
    httpx.CookieConflict: (CloudProtocolError, "the cloud router sent conflicting cookies"),
    httpx.StreamConsumed: (CloudProtocolError, "the cloud response was already consumed"),
    httpx.StreamClosed: (CloudProtocolError, "the cloud response was already closed"),
    httpx.ResponseNotRead: (CloudProtocolError, "the cloud response was not read"),
    httpx.RequestNotRead: (CloudProtocolError, "the cloud request was not read"),
    httpx.StreamError: (CloudProtocolError, "the cloud response stream failed"),
}


def map_httpx_error(exc: Exception) -> CloudRouterError:
    """Our error for an httpx exception. Never quotes ``str(exc)``: it may name headers or URLs."""
    for cls in type(exc).__mro__:
        entry = HTTPX_ERROR_MAP.get(cls)
        if entry is not None:
            error_cls, message = entry
            return error_cls(message)
    return CloudConnectError("the request to the cloud router failed")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    if len(cleaned) > _MAX_QUOTED:
        cleaned = cleaned[:_MAX_QUOTED] + "…"
    return cleaned


def upstream_message(payload: object, secrets: tuple[str, ...] = ()) -> str | None:
    """The human message from an OpenAI/HF-shaped error payload, scrubbed and truncated."""
    message: object = None
    if isinstance(payload, Mapping):
        error = payload.get("error", payload)
        if isinstance(error, str):
            message = error
        elif isinstance(error, Mapping):
            message = error.get("message")
        if message is None:
            message = payload.get("message")
    elif isinstance(payload, str):
        message = payload
    if not isinstance(message, str) or not message.strip():
        return None
    return _scrub(message, secrets)


def _decode_body(body: bytes) -> object:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return body.decode("utf-8", errors="replace")


def _error_code(payload: object) -> str | None:
    """The OpenAI-style ``error.code`` (or ``code``) of an error payload, when there is one."""
    if not isinstance(payload, Mapping):
        return None
    error = payload.get("error")
    code = error.get("code") if isinstance(error, Mapping) else payload.get("code")
    return code if isinstance(code, str) else None


def _model_not_supported(payload: object, detail: str | None) -> bool:
    # The router says it both ways: an OpenAI object with code "model_not_supported", and
    # in the message text ("... is not supported by any provider you have enabled").
    if _error_code(payload) == "model_not_supported":
        return True
    return detail is not None and "not supported by any provider" in detail


def error_for_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secrets: tuple[str, ...] = (),
) -> CloudRouterError:
    """Our error for a non-2xx router response."""
    payload = _decode_body(body)
    detail = upstream_message(payload, secrets)
    suffix = f": {detail}" if detail else ""
    if status == 401:
        return CloudAuthError(f"the cloud router refused the credential (401){suffix}", status=401)
    if status == 402:
        return CloudPaymentRequired(
            f"the cloud account has not enough balance (402){suffix}", status=402
        )
    if status == 403:
        return CloudForbidden(f"the cloud credential may not do this (403){suffix}", status=403)
    if status == 429:
        retry = parse_retry_after(headers.get("retry-after"))
        when = f"; retry after {retry:.0f} s" if retry is not None else ""
        return CloudRateLimited(
            f"the cloud router is rate limiting this box (429){when}{suffix}", retry_after_s=retry
        )
    if status in (400, 404, 422) and _model_not_supported(payload, detail):
        return CloudModelUnavailable(
            f"no enabled cloud provider serves this model ({status}){suffix}", status=status
        )
    if status == 404:
        return CloudModelNotFound(
            f"the cloud router does not know this model or provider (404){suffix}", status=404
        )
    if status in (400, 413, 422):
        return CloudBadRequest(
            f"the cloud router refused the request ({status}){suffix}", status=status
        )
    if 500 <= status <= 599:
        return CloudServerError(f"the cloud router failed ({status}){suffix}", status=status)
    return CloudHTTPError(f"the cloud router answered {status}{suffix}", status=status)


def error_in_stream(payload: object, secrets: tuple[str, ...] = ()) -> CloudRouterError:
    """Our error for an ``error`` event inside a 200 stream.

    Providers put the HTTP status they would have sent in ``error.code`` or
    ``error.status_code`` (a number or a numeric string); the account and model states
    must not hide behind a generic stream error.
    """
    detail = upstream_message(payload, secrets)
    error = payload.get("error") if isinstance(payload, Mapping) else None
    status: int | None = None
    if isinstance(error, Mapping):
        for key in ("status_code", "status", "code"):
            value = error.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                status = value
            elif isinstance(value, str) and value.isdigit():
                status = int(value)
            if status is not None:
                break
    if _model_not_supported(payload, detail) or status in (401, 402, 403, 429):
        return error_for_status(
            status or 400,
            {},
            json.dumps(payload).encode() if isinstance(payload, Mapping) else b"",
            secrets=secrets,
        )
    return CloudStreamError(
        "the cloud provider reported an error mid-stream" + (f": {detail}" if detail else "")
    )
