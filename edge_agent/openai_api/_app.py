"""The Starlette application of the OpenAI-compatible API: routes that only translate.

``POST /v1/chat/completions`` calls the same chat handler as the gRPC servicer (routing,
admission, budgets, audit happen there). A chat runs inside its response: the first chunk
is awaited before the status line is sent, so a refusal (bad field, saturated box, unknown
model) is a real HTTP status; a disconnect cancels the generation and frees its KV cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sse_starlette import ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from edge_agent.chat import CallContext, ChatChunk, ChatSpec
from edge_agent.errors import DeadlineExceeded, NotFound
from edge_agent.openai_api._auth import HttpAuth
from edge_agent.openai_api._convert import (
    ModelNames,
    deadline_from_headers,
    invalid_from_validation,
    provenance_out,
    spec_from_request,
    timing_out,
    tool_calls_out,
    usage_out,
)
from edge_agent.openai_api._errors import (
    PayloadTooLarge,
    UnknownEndpoint,
    error_body,
    error_response,
)
from edge_agent.openai_api._schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorEnvelope,
    ModelCard,
    ModelList,
    ToolCallDelta,
)

if TYPE_CHECKING:
    from edge_agent.config import EngineConfig

__all__ = ["ChatHandler", "ModelEntry", "build_app"]

ChatHandler = Callable[[ChatSpec, CallContext], AsyncIterator[ChatChunk]]
_REQUEST_ID = "x-request-id"
_PROVENANCE = "x-edge-provenance"
_DONE = ServerSentEvent(data="[DONE]", sep="\n").encode()
_PING = ServerSentEvent(comment="ping", sep="\n").encode()


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model the box can answer with; the first local one is the ``model`` to name."""

    id: str
    destination: str  # "local" or "cloud"
    version: str = ""
    context_length: int = 0
    created: int = 0


def _request_id(request: Request) -> str:
    value = request.headers.get(_REQUEST_ID, "")
    if 0 < len(value) <= 64 and value.replace("-", "").isalnum() and value.isascii():
        return value
    return uuid.uuid4().hex


def _event(obj: ChatCompletionChunk | ErrorEnvelope) -> bytes:
    return ServerSentEvent(data=obj.model_dump_json(), sep="\n").encode()


def _provenance_header(chunk: ChatChunk) -> str:
    p = chunk.provenance
    if p is None:
        return ""
    items = [
        ("destination", p.destination),
        ("model", p.model),
        ("version", p.model_version),
        ("execution_provider", p.execution_provider),
        ("cloud_provider", p.cloud_provider),
        ("reason", p.decision_reason),
    ]
    return "; ".join(f"{k}={v}" for k, v in items if v and v.isascii() and v.isprintable())


def _expired() -> DeadlineExceeded:
    return DeadlineExceeded("the request's deadline (X-Edge-Deadline-Ms) passed")


class _ClientGone(Exception):
    """The client closed the connection."""


async def _until_disconnect(receive: Receive, awaitable: Awaitable[Any]) -> Any:
    """``awaitable``'s result, or _ClientGone (with it cancelled) if the client leaves first.

    Runs in the caller's task (the chat stream must live in one task: its admission and
    timeouts are bound to it); only the disconnect watch is a task of its own.
    """
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        if me is not None:
            me.cancel()

    watcher = loop.create_task(watch())
    try:
        return await awaitable
    except asyncio.CancelledError:
        if gone and me is not None:
            me.uncancel()
            raise _ClientGone from None
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


class _SseOut:
    """The sends of one event stream: the status line once, then events, and a keep-alive
    comment whenever nothing was sent for ``ping_s`` (a long prefill or queue before the
    first token, a slow step), so proxies and clients with read timeouts keep the stream.
    Clients ignore comment lines (the SSE specification; the ``openai`` SDK does)."""

    def __init__(self, send: Send, start: Message, ping_s: float) -> None:
        self._send = send
        self._start = start
        self._ping_s = ping_s
        self._lock = asyncio.Lock()  # the pinger and the stream never interleave a send
        self._last = time.monotonic()
        self.started = self.closed = False

    async def _body(self, data: bytes, last: bool) -> None:
        if not self.started:
            await self._send(self._start)
            self.started = True
        await self._send({"type": "http.response.body", "body": data, "more_body": not last})
        self._last = time.monotonic()
        self.closed = last

    async def event(self, data: bytes, *, last: bool = False) -> None:
        async with self._lock:
            await self._body(data, last)

    async def refuse(self, exc: Exception, request_id: str) -> None:
        """An error before the first chunk: a real HTTP status while nothing was sent."""
        async with self._lock:
            if not self.started:
                await send_response(error_response(exc, request_id), self._send)
                self.started = self.closed = True
                return
        await self.fail(exc, request_id)

    async def fail(self, exc: Exception, request_id: str) -> None:
        _, err, _ = error_body(exc, request_id)
        await self.event(_event(ErrorEnvelope(error=err)), last=True)

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(max(0.0, self._last + self._ping_s - time.monotonic()))
            async with self._lock:
                if self.closed:
                    return
                if time.monotonic() - self._last >= self._ping_s:
                    await self._body(_PING, last=False)

    @contextlib.asynccontextmanager
    async def pinging(self) -> AsyncIterator[None]:
        if self._ping_s <= 0:
            yield
            return
        task = asyncio.get_running_loop().create_task(self._ping())
        try:
            yield
        finally:
            task.cancel()
            # A ping that failed (the client left) only ends the pings; the stream's own
            # next send meets the same end.
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task


class _ChatResponse(Response):
    """Runs one chat while answering: SSE chunks or one JSON object."""

    def __init__(
        self,
        chat: ChatHandler,
        spec: ChatSpec,
        call: CallContext,
        request: ChatCompletionRequest,
        ping_s: float,
    ) -> None:
        self._chat = chat
        self._ping_s = ping_s
        self._spec = spec
        self._call = call
        self._stream = request.stream
        self._usage = bool(request.stream_options and request.stream_options.include_usage)
        self._model = request.model
        self._id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self._created = int(time.time())
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = self._call.request_id
        try:
            stream = self._chat(self._spec, self._call)
        except Exception as exc:
            await error_response(exc, rid)(scope, receive, send)
            return
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            try:
                if self._stream:
                    await _until_disconnect(receive, self._send_stream(stream, send))
                else:
                    await _until_disconnect(receive, self._send_completion(stream, send))
            except _ClientGone:
                return  # aclosing() closes the stream: the generation is cancelled
            # A stream answers at its final chunk; the chat path then ends its own way, so
            # its metrics and audit say "ok", not "cancelled" (as closing it here would).
            # Not watched for a disconnect: the client may leave once it has [DONE].
            async for _ in stream:
                pass

    def _chunk(self, delta: Delta, finish: str | None = None, **extra: Any) -> bytes:
        chunk = ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],
            **extra,
        )
        return _event(chunk)

    def _start(self, media_type: str, extra: dict[str, str]) -> Message:
        headers = {_REQUEST_ID: self._call.request_id, **extra}
        if self._stream:
            headers["cache-control"] = "no-cache"
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-type", media_type.encode("latin-1")))
        return {"type": "http.response.start", "status": 200, "headers": raw}

    def _expiry(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Ends the answer at the client's ``X-Edge-Deadline-Ms`` (TimeoutError at its exit);
        the stream is then closed, which cancels the generation."""
        if self._call.deadline is None:
            return contextlib.nullcontext()
        loop = asyncio.get_running_loop()
        return asyncio.timeout_at(loop.time() + self._call.deadline - time.monotonic())

    async def _send_stream(self, stream: AsyncIterator[ChatChunk], send: Send) -> None:
        rid = self._call.request_id
        out = _SseOut(send, self._start("text/event-stream; charset=utf-8", {}), self._ping_s)
        async with out.pinging():
            try:
                async with self._expiry():
                    await self._events(stream, out)
            except TimeoutError:
                await out.refuse(_expired(), rid)

    async def _events(self, stream: AsyncIterator[ChatChunk], out: _SseOut) -> None:
        rid = self._call.request_id
        try:
            first = await anext(stream)
        except Exception as exc:
            # Nothing was sent yet: a refusal is a real HTTP status (unless a keep-alive
            # ping had to start the stream first).
            await out.refuse(exc, rid)
            return
        role_sent = False
        chunk: ChatChunk | None = first
        try:
            while chunk is not None:
                if not role_sent or chunk.delta:
                    delta = (
                        Delta(role="assistant", content=chunk.delta)
                        if not role_sent
                        else Delta(content=chunk.delta)
                    )
                    role_sent = True
                    await out.event(self._chunk(delta))
                if chunk.tool_calls:
                    calls = [
                        ToolCallDelta(index=i, id=c.id, function=c.function)
                        for i, c in enumerate(tool_calls_out(chunk))
                    ]
                    await out.event(self._chunk(Delta(tool_calls=calls)))
                if chunk.finish_reason is not None:
                    await self._finish(chunk, out)
                    return
                chunk = await anext(stream, None)
        except Exception as exc:
            # Headers are gone: the error travels as an event, as OpenAI's streams do.
            await out.fail(exc, rid)
            return
        await out.event(b"", last=True)

    async def _finish(self, chunk: ChatChunk, out: _SseOut) -> None:
        extra: dict[str, Any] = {}
        if (p := provenance_out(chunk)) is not None:
            extra["edge_provenance"] = p
        if (t := timing_out(chunk)) is not None:
            extra["edge_timing"] = t
        await out.event(self._chunk(Delta(), chunk.finish_reason, **extra))
        usage = usage_out(chunk)
        if self._usage and usage is not None:
            final = ChatCompletionChunk(
                id=self._id, created=self._created, model=self._model, choices=[], usage=usage
            )
            await out.event(_event(final))
        await out.event(_DONE, last=True)

    async def _send_completion(self, stream: AsyncIterator[ChatChunk], send: Send) -> None:
        text: list[str] = []
        calls = []
        last: ChatChunk | None = None
        try:
            async with self._expiry():
                async for chunk in stream:
                    text.append(chunk.delta)
                    calls.extend(tool_calls_out(chunk))
                    last = chunk
        except TimeoutError:
            await send_response(error_response(_expired(), self._call.request_id), send)
            return
        except Exception as exc:
            await send_response(error_response(exc, self._call.request_id), send)
            return
        content = "".join(text)
        completion = ChatCompletion(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[
                Choice(
                    message=AssistantMessage(
                        content=content if content or not calls else None,
                        tool_calls=calls or None,
                    ),
                    finish_reason=last.finish_reason if last else "stop",
                )
            ],
            usage=usage_out(last) if last else None,
            edge_provenance=provenance_out(last) if last else None,
            edge_timing=timing_out(last) if last else None,
        )
        data = completion.model_dump_json().encode()
        extra = {"content-length": str(len(data))}
        if last is not None and (header := _provenance_header(last)):
            extra[_PROVENANCE] = header
        await send(self._start("application/json", extra))
        await send({"type": "http.response.body", "body": data, "more_body": False})


async def send_response(response: Response, send: Send) -> None:
    """Send a complete (non-streaming) Starlette response through ``send``."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes")
    return bytes(body)


def build_app(
    *,
    chat: ChatHandler,
    models: Callable[[], Sequence[ModelEntry]],
    ready: Callable[[], bool],
    auth: HttpAuth,
    limits: EngineConfig,
    max_body_bytes: int,
    sse_ping_interval_s: float = 15.0,
) -> Starlette:
    """The ASGI application; the callables are the daemon's (tests pass the real ones)."""

    def local_name() -> str:
        for entry in models():
            if entry.destination == "local":
                return entry.id
        return ""

    async def chat_completions(request: Request) -> Response:
        arrived = time.monotonic()  # the deadline counts from here, as gRPC's from the call
        rid = _request_id(request)
        try:
            identity = auth.admit(
                request.scope, request.headers.getlist("authorization"), request.url.path
            )
            raw = await _read_body(request, max_body_bytes)
            try:
                body = ChatCompletionRequest.model_validate_json(raw)
            except ValidationError as exc:
                raise invalid_from_validation(exc) from None
            spec = spec_from_request(body, limits, ModelNames(local_name()), request.headers)
            deadline = deadline_from_headers(request.headers, arrived)
        except Exception as exc:
            return error_response(exc, rid)
        call = CallContext(client_id=identity.client_id, request_id=rid, deadline=deadline)
        return _ChatResponse(chat, spec, call, body, sse_ping_interval_s)

    def card(entry: ModelEntry) -> ModelCard:
        return ModelCard(
            id=entry.id,
            created=entry.created,
            owned_by="edge-agent" if entry.destination == "local" else "huggingface",
            edge_destination=entry.destination,
            edge_context_length=entry.context_length,
            edge_version=entry.version,
        )

    def _json(model: ModelList | ModelCard, rid: str) -> Response:
        return Response(
            model.model_dump_json(),
            media_type="application/json",
            headers={_REQUEST_ID: rid},
        )

    async def list_models(request: Request) -> Response:
        rid = _request_id(request)
        try:
            auth.admit(request.scope, request.headers.getlist("authorization"), request.url.path)
        except Exception as exc:
            return error_response(exc, rid)
        return _json(ModelList(data=[card(e) for e in models()]), rid)

    async def get_model(request: Request) -> Response:
        rid = _request_id(request)
        wanted = request.path_params["model_id"]
        try:
            auth.admit(request.scope, request.headers.getlist("authorization"), request.url.path)
            for entry in models():
                if entry.id == wanted:
                    return _json(card(entry), rid)
            raise NotFound(f"model {wanted!r} does not exist on this box")
        except Exception as exc:
            return error_response(exc, rid)

    async def health(request: Request) -> Response:
        # For load balancers: no authentication, no detail beyond the two states.
        is_ready = ready()
        probe = request.path_params.get("probe", "")
        if probe not in ("", "live", "ready"):
            return await not_found(request, LookupError(probe))
        ok = True if probe == "live" else is_ready
        state = {"status": "ok" if ok else "unavailable", "live": True, "ready": is_ready}
        return JSONResponse(state, status_code=200 if ok else 503)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(
            UnknownEndpoint(f"no such endpoint: {request.method} {request.url.path}"),
            _request_id(request),
        )

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/health/{probe:str}", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
