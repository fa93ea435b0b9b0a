"""Error mapping at the httpx boundary and for router statuses."""

from __future__ import annotations

import email.utils
import inspect

import grpc
import httpx
import pytest

from edge_agent.cloud import (
    CloudAuthError,
    CloudConnectError,
    CloudRateLimited,
    CloudRouterError,
    CloudServerError,
    CloudStreamCut,
    CloudTimeout,
)
from edge_agent.cloud._errors import (
    HTTPX_ERROR_MAP,
    error_for_status,
    map_httpx_error,
    parse_retry_after,
    upstream_message,
)
from edge_agent.errors import CloudError, EdgeAgentError


def _httpx_exception_classes() -> list[type[Exception]]:
    return [
        obj
        for name in httpx.__all__
        if inspect.isclass(obj := getattr(httpx, name)) and issubclass(obj, Exception)
    ]


def test_every_httpx_exception_class_is_mapped_explicitly() -> None:
    classes = _httpx_exception_classes()
    assert len(classes) >= 25  # sanity: the enumeration itself works
    missing = [cls.__name__ for cls in classes if cls not in HTTPX_ERROR_MAP]
    assert not missing, f"httpx exceptions without an explicit mapping: {missing}"


@pytest.mark.parametrize("cls", _httpx_exception_classes(), ids=lambda c: c.__name__)
def test_each_httpx_exception_maps_to_a_cloud_error(cls: type[Exception]) -> None:
    request = httpx.Request("POST", "https://router.example/v1/chat/completions")
    if issubclass(cls, httpx.HTTPStatusError):
        exc: Exception = cls("x", request=request, response=httpx.Response(500, request=request))
    elif issubclass(cls, httpx.RequestError):
        exc = cls("boom", request=request)
    elif issubclass(cls, httpx.StreamError) and cls is not httpx.StreamError:
        exc = cls()  # type: ignore[call-arg]  # these subclasses take no message
    else:
        exc = cls("boom")
    mapped = map_httpx_error(exc)
    assert isinstance(mapped, CloudRouterError)
    assert isinstance(mapped, CloudError)
    assert isinstance(mapped, EdgeAgentError)
    assert "boom" not in mapped.message  # upstream text is never quoted
    assert mapped.kind != "cloud"


def test_mapping_follows_the_class_hierarchy_for_unknown_subclasses() -> None:
    class FutureTimeout(httpx.ReadTimeout):
        pass

    assert isinstance(map_httpx_error(FutureTimeout("x")), CloudTimeout)
    assert isinstance(map_httpx_error(httpx.ConnectError("x")), CloudConnectError)
    assert isinstance(map_httpx_error(httpx.RemoteProtocolError("x")), CloudStreamCut)
    assert isinstance(map_httpx_error(ValueError("x")), CloudConnectError)


def test_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


def test_status_mapping_codes_and_messages() -> None:
    err = error_for_status(429, {"retry-after": "5"}, b'{"error": {"message": "busy"}}')
    assert isinstance(err, CloudRateLimited)
    assert err.retry_after_s == 5.0
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "busy" in err.message
    err = error_for_status(504, {}, b"<html>gateway</html>")
    assert isinstance(err, CloudServerError)
    assert err.status == 504
    err = error_for_status(401, {}, b"")
    assert isinstance(err, CloudAuthError)
    assert err.message.endswith("(401)")


def test_upstream_messages_are_scrubbed_and_truncated() -> None:
    secret = "hf_SECRETSECRET"
    payload = {"error": {"message": f"token {secret} is\nbad" + "x" * 500}}
    text = upstream_message(payload, (secret,))
    assert text is not None
    assert secret not in text
    assert "[redacted]" in text
    assert "\n" not in text
    assert len(text) <= 201
    assert upstream_message({"error": "plain"}) == "plain"
    assert upstream_message({"message": "top"}) == "top"
    assert upstream_message({"error": {"code": 3}}) is None
    assert upstream_message(["not", "a", "mapping"]) is None
