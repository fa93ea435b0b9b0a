"""The Hugging Face Inference Providers router client (OpenAI-compatible, over httpx).

Every call is bounded: httpx's connect/read/write/pool timeouts cover the socket, a total
deadline (``asyncio.timeout_at``) covers the whole request, and an idle deadline between SSE
data events stops a peer that drips bytes without ever completing an event (slow-loris).
Every httpx or protocol failure leaves this module as a ``CloudRouterError`` subclass.

Air-gapped mode is enforced before httpx is touched: no ``AsyncClient`` is created, no name
is resolved, and the transport itself is wrapped by a guard that refuses to send, so even a
code path that slipped past the first check cannot open a socket.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Protocol

import httpx

from edge_agent.chat import Usage
from edge_agent.cloud._config import CloudConfig
from edge_agent.cloud._errors import (
    CloudAuthError,
    CloudDisabled,
    CloudProtocolError,
    CloudRouterError,
    CloudStreamCut,
    CloudStreamError,
    CloudTimeout,
    error_for_status,
    map_httpx_error,
    upstream_message,
)
from edge_agent.cloud._models import ModelCatalog, ModelRef, parse_model_ref, parse_models_response
from edge_agent.cloud._sse import DONE, SSEEvent, iter_sse, parse_completion
from edge_agent.cloud._tools import ToolCallAssembler, message_body, tool_fields
from edge_agent.cloud._transport import AirGapGuard, tls_context
from edge_agent.cloud._types import CloudAttempt, CloudChatRequest, StreamChunk
from edge_agent.errors import EdgeAgentError, InvalidArgument

__all__ = ["OutcomeObserver", "RouterClient", "TokenProvider"]

TokenProvider = Callable[[], str | None]

_TOKEN = re.compile(r"^[\x21-\x7e]{1,4096}$")
_HTTPX_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.CookieConflict, httpx.StreamError)
_MAX_ERROR_BODY = 64 * 1024
_MAX_CATALOG = 16 * 1024 * 1024
_PROBE_OK = frozenset({404, 405})  # the router answered: reachable even if HEAD is not served
# httpx failures that prove no byte of the request reached the router.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)


class OutcomeObserver(Protocol):
    """Receives the outcome of every real chat request (the connectivity monitor)."""

    def record_success(self, latency_ms: float | None = None) -> None: ...

    def record_failure(self, kind: str, retry_after_s: float | None = None) -> None: ...


class RouterClient:
    """Talks to ``{base_url}/chat/completions`` and ``{base_url}/models``.

    ``token_provider`` is called for every request (the sealed-credential store); it returns
    None while no credential is loaded. ``transport`` replaces httpx's network transport
    (tests, or a custom TLS setup); the air-gap guard wraps it too.
    """

    def __init__(
        self,
        config: CloudConfig,
        token_provider: TokenProvider,
        *,
        air_gapped: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: OutcomeObserver | None = None,
    ) -> None:
        self._config = config
        self._token_provider = token_provider
        self._air_gapped = air_gapped
        self._transport = transport
        self._observer = observer
        self._http: httpx.AsyncClient | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RouterClient(base_url={self._config.base_url!r}, air_gapped={self._air_gapped})"

    @property
    def config(self) -> CloudConfig:
        return self._config

    @property
    def air_gapped(self) -> bool:
        return self._air_gapped

    def attach_observer(self, observer: OutcomeObserver | None) -> None:
        self._observer = observer

    def has_credential(self) -> bool:
        """Whether a credential is loaded (never opens a connection)."""
        try:
            return bool(self._token_provider())
        except Exception:
            return False

    async def set_air_gapped(self, air_gapped: bool) -> None:
        """Switch air-gapped mode; switching on also closes pooled and in-flight connections."""
        self._air_gapped = air_gapped
        if air_gapped and self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def __aenter__(self) -> RouterClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- plumbing -------------------------------------------------------------------------

    def _credential(self) -> str:
        if self._air_gapped:
            raise CloudDisabled("the cloud route is disabled: this box is air-gapped")
        token: str | None = None
        unreadable = False
        try:
            token = self._token_provider()
        except EdgeAgentError:
            raise
        except Exception:
            unreadable = True
        if unreadable:
            # Raised outside the handler so not even __context__ keeps what the store said:
            # it might quote the secret it was reading.
            raise CloudAuthError("the cloud credential could not be read")
        if not token:
            raise CloudDisabled("no cloud credential is loaded")
        if not _TOKEN.match(token):
            raise CloudAuthError("the cloud credential is malformed")
        return token

    def _client(self) -> httpx.AsyncClient:
        if self._air_gapped:
            raise CloudDisabled("the cloud route is disabled: this box is air-gapped")
        if self._closed:
            raise CloudDisabled("the cloud client is closed")
        if self._http is None:
            c = self._config
            inner = self._transport or httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=c.max_connections,
                    max_keepalive_connections=c.max_connections,
                    keepalive_expiry=30.0,
                ),
                proxy=c.proxy,
                retries=0,
                verify=tls_context(),
            )
            self._http = httpx.AsyncClient(
                base_url=c.base_url + "/",
                transport=AirGapGuard(inner, lambda: self._air_gapped),
                timeout=httpx.Timeout(
                    connect=c.connect_timeout_s,
                    read=c.read_timeout_s,
                    write=c.write_timeout_s,
                    pool=c.pool_timeout_s,
                ),
                headers={"User-Agent": "edge-agent"},
                follow_redirects=False,
                trust_env=False,  # proxies come from [cloud].proxy, never from the environment
            )
        return self._http

    def _headers(self, token: str, accept: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}", "Accept": accept}
        if self._config.bill_to:
            headers["X-HF-Bill-To"] = self._config.bill_to
        return headers

    @staticmethod
    async def _read_limited(
        response: httpx.Response, deadline: float, limit: int, *, strict: bool
    ) -> bytes:
        buf = bytearray()
        try:
            async with asyncio.timeout_at(deadline):
                async for part in response.aiter_bytes():
                    buf += part
                    if len(buf) > limit:
                        if strict:
                            raise CloudProtocolError("the cloud router's answer is too large")
                        break
        except TimeoutError:
            raise CloudTimeout("the cloud router did not finish its answer in time") from None
        return bytes(buf[:limit])

    def _report(self, error: CloudRouterError | None, latency_ms: float | None) -> None:
        if self._observer is None:
            return
        if error is None:
            self._observer.record_success(latency_ms)
        elif not isinstance(error, CloudDisabled):
            self._observer.record_failure(error.kind, getattr(error, "retry_after_s", None))

    def _chat_body(self, request: CloudChatRequest, ref: ModelRef) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": str(ref),
            "messages": [message_body(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        optional = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body.update(tool_fields(request))
        if request.json_schema is not None:
            try:
                schema = json.loads(request.json_schema)
            except ValueError:
                raise InvalidArgument("json_schema", "is not valid JSON") from None
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema, "strict": True},
            }
        return body

    # -- public calls -----------------------------------------------------------------------

    async def stream_chat(
        self,
        request: CloudChatRequest,
        *,
        timeout_s: float | None = None,
        attempt: CloudAttempt | None = None,
    ) -> AsyncGenerator[StreamChunk, None]:
        """Stream one chat completion. The last chunk has ``finish_reason`` (and ``usage``).

        ``timeout_s`` shortens the total deadline (e.g. to the gRPC call's remaining time).
        ``attempt`` is filled in with what reached the router (budgets settle by it).
        Use with ``contextlib.aclosing`` so an abandoned stream closes its connection.
        """
        attempt = attempt if attempt is not None else CloudAttempt()
        ref = parse_model_ref(request.model or self._config.model)
        body = self._chat_body(request, ref)
        token = self._credential()
        http = self._client()
        loop = asyncio.get_running_loop()
        started = loop.time()
        total = self._config.total_timeout_s
        deadline = started + (total if timeout_s is None else min(total, max(timeout_s, 0.0)))
        latency_ms: float | None = None
        try:
            try:
                req = http.build_request(
                    "POST",
                    "chat/completions",
                    json=body,
                    headers=self._headers(token, "text/event-stream"),
                )
                attempt.sent = True
                async with asyncio.timeout_at(deadline):
                    response = await http.send(req, stream=True)
            except TimeoutError:
                raise CloudTimeout("the cloud router did not answer in time") from None
            except _NOT_SENT:
                attempt.sent = False
                raise
            try:
                latency_ms = (loop.time() - started) * 1000.0
                attempt.status = response.status_code
                await self._check_stream_response(response, deadline, token)
                attempt.accepted = True
                provider = response.headers.get("x-inference-provider") or ref.provider
                attempt.provider = provider
                async with aclosing(iter_sse(response.aiter_bytes())) as events:
                    async for chunk in self._chunks(events, deadline, provider, token):
                        yield chunk
            finally:
                await response.aclose()
        except _HTTPX_ERRORS as exc:
            error = map_httpx_error(exc)
            attempt.error_kind = error.kind
            self._report(error, None)
            raise error from exc
        except CloudRouterError as exc:
            attempt.error_kind = exc.kind
            self._report(exc, None)
            raise
        self._report(None, latency_ms)

    async def _check_stream_response(
        self, response: httpx.Response, deadline: float, token: str
    ) -> None:
        loop = asyncio.get_running_loop()
        body_deadline = min(deadline, loop.time() + self._config.event_timeout_s)
        if not response.is_success:
            body = await self._read_limited(response, body_deadline, _MAX_ERROR_BODY, strict=False)
            raise error_for_status(response.status_code, response.headers, body, secrets=(token,))
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return
        body = await self._read_limited(response, body_deadline, _MAX_ERROR_BODY, strict=False)
        try:
            payload: object = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and "error" in payload:
            detail = upstream_message(payload, (token,))
            raise CloudStreamError(
                "the cloud router reported an error" + (f": {detail}" if detail else "")
            )
        raise CloudProtocolError("the cloud router did not answer with an event stream")

    async def _chunks(
        self,
        events: AsyncIterator[SSEEvent],
        deadline: float,
        provider: str | None,
        token: str,
    ) -> AsyncIterator[StreamChunk]:
        loop = asyncio.get_running_loop()
        model: str | None = None
        finish: str | None = None
        usage: Usage | None = None
        calls = ToolCallAssembler()
        done = False
        while True:
            limit = min(deadline, loop.time() + self._config.event_timeout_s)
            try:
                async with asyncio.timeout_at(limit):
                    event = await anext(events, None)
            except TimeoutError:
                if limit >= deadline:
                    raise CloudTimeout("the cloud answer passed its total deadline") from None
                raise CloudTimeout("the cloud router went silent between events") from None
            if event is None:
                break
            if event.data.strip() == DONE:
                done = True
                break
            delta = parse_completion(event, (token,))
            model = delta.model or model
            usage = delta.usage or usage
            finish = delta.finish_reason or finish
            calls.add(delta.tool_calls)
            if delta.content:
                yield StreamChunk(
                    delta=delta.content, source="cloud", model=model, provider=provider
                )
        if finish is None:
            if not done:
                raise CloudStreamCut("the cloud stream ended before the answer finished")
            finish = "stop"
        yield StreamChunk(
            delta="",
            source="cloud",
            finish_reason=finish,
            usage=usage,
            model=model,
            provider=provider,
            tool_calls=calls.calls(),
        )

    async def list_models(self, *, timeout_s: float | None = None) -> ModelCatalog:
        """``GET /models``: availability, context lengths and pricing per provider."""
        token = self._credential()
        http = self._client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._config.event_timeout_s if timeout_s is None else timeout_s)
        try:
            try:
                req = http.build_request(
                    "GET", "models", headers=self._headers(token, "application/json")
                )
                async with asyncio.timeout_at(deadline):
                    response = await http.send(req, stream=True)
            except TimeoutError:
                raise CloudTimeout("the cloud model list did not arrive in time") from None
            try:
                if not response.is_success:
                    body = await self._read_limited(
                        response, deadline, _MAX_ERROR_BODY, strict=False
                    )
                    raise error_for_status(
                        response.status_code, response.headers, body, secrets=(token,)
                    )
                body = await self._read_limited(response, deadline, _MAX_CATALOG, strict=True)
            finally:
                await response.aclose()
        except _HTTPX_ERRORS as exc:
            raise map_httpx_error(exc) from exc
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise CloudProtocolError("the cloud model list is not valid JSON") from exc
        return parse_models_response(payload)

    async def probe(self, *, timeout_s: float | None = None) -> float:
        """One cheap round trip (``HEAD /models``); returns its latency in milliseconds."""
        token = self._credential()
        http = self._client()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + (self._config.probe_timeout_s if timeout_s is None else timeout_s)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await http.head(
                        "models", headers=self._headers(token, "application/json")
                    )
            except TimeoutError:
                raise CloudTimeout("the cloud router did not answer the probe in time") from None
        except _HTTPX_ERRORS as exc:
            raise map_httpx_error(exc) from exc
        if response.status_code < 400 or response.status_code in _PROBE_OK:
            return (loop.time() - started) * 1000.0
        raise error_for_status(response.status_code, response.headers, b"", secrets=(token,))
