"""A stand-in for the Hugging Face router: a real HTTP/1.1 server on 127.0.0.1, port 0.

It speaks the OpenAI-compatible protocol the router speaks (``POST /v1/chat/completions``
streamed as chunked ``text/event-stream`` with a usage chunk and ``[DONE]``;
``GET``/``HEAD /v1/models`` with per-provider pricing), checks the bearer token, and plays a
script of behaviours per endpoint so each test injects its own fault: error statuses with
or without Retry-After, a server that never answers, a slow first byte, a slow-loris drip,
a stream cut mid-way, malformed SSE, an in-stream error object.

Everything runs in threads of a ``ThreadingHTTPServer``; ``stop()`` wakes every sleeping
handler, shuts open connections and joins all threads, so nothing outlives a test. With a
``tls`` context each connection's handshake runs in its handler thread under the handler's
timeout, never in the accept loop: a client that connects and never finishes its handshake
must not stall ``stop()`` (it once hung a CI run for the whole test timeout).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

DEFAULT_WORDS = ("Hello", " from", " the", " cloud", ".")
DEFAULT_MODEL = "org/big-model"
DEFAULT_PROVIDER = "novita"

Then = Literal["finish", "cut", "drip", "hang", "malformed", "error", "eof", "bad_utf8"]


@dataclass
class Reply:
    """A streamed answer: ``words`` as content chunks, then ``then``.

    ``after`` limits how many words are sent before ``then`` applies (all by default).
    finish: finish chunk, usage chunk, [DONE]. cut: close the socket mid-body. drip: send
    one byte of an event every ``drip_interval_s`` forever. hang: send nothing more.
    malformed: a ``data:`` line that is not JSON. error: an in-stream error object.
    eof: end the body cleanly without finish or [DONE]. bad_utf8: invalid UTF-8 bytes.
    """

    words: tuple[str, ...] = DEFAULT_WORDS
    then: Then = "finish"
    after: int | None = None
    first_byte_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    drip_interval_s: float = 0.05
    provider: str | None = DEFAULT_PROVIDER
    usage: bool = True
    crlf: bool = False
    content_type: str = "text/event-stream; charset=utf-8"
    error_payload: Any = None  # then="error": the event's JSON (default: a server error)
    # Calls ({"id", "name", "arguments"}) streamed after the words as OpenAI fragments; the
    # answer then finishes with "tool_calls".
    tool_calls: tuple[dict[str, str], ...] = ()


@dataclass
class Status:
    """A plain HTTP error answer."""

    code: int
    body: Any = field(default_factory=lambda: {"error": {"message": "injected failure"}})
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Read the request, then never answer (until the server stops)."""


Behaviour = Reply | Status | Hang


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def default_catalog() -> dict[str, Any]:
    def offer(provider: str, inp: float, out: float, ctx: int, status: str = "live") -> Any:
        return {
            "provider": provider,
            "status": status,
            "context_length": ctx,
            "pricing": {"input": inp, "output": out},
            "supports_tools": True,
            "supports_structured_output": False,
        }

    return {
        "object": "list",
        "data": [
            {
                "id": DEFAULT_MODEL,
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": "org",
                "providers": [
                    offer("novita", 0.2, 0.8, 32768),
                    offer("together", 0.3, 0.6, 131072),
                    offer("staging-co", 0.01, 0.01, 8192, status="staging"),
                ],
            },
            {"id": "org/unpriced", "object": "model", "providers": [{"provider": "x"}]},
        ],
    }


class FakeRouter:
    def __init__(self, token: str, tls: ssl.SSLContext | None = None) -> None:
        self.token = token
        self.tls = tls
        self.catalog: dict[str, Any] = default_catalog()
        self.requests: list[Recorded] = []
        self._chat: deque[Behaviour] = deque()
        self._models: deque[Behaviour] = deque()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.router = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    def on_chat(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next chat requests (then the default reply)."""
        with self._lock:
            self._chat.extend(behaviours)

    def reset(self) -> None:
        """Forget queued behaviours (the next requests get the default answers)."""
        with self._lock:
            self._chat.clear()
            self._models.clear()

    def on_models(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._models.extend(behaviours)

    def next_behaviour(self, chat: bool) -> Behaviour | None:
        with self._lock:
            queue = self._chat if chat else self._models
            return queue.popleft() if queue else None

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def start(self) -> FakeRouter:
        self._thread.start()
        return self

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins every handler thread
        self._thread.join(timeout=5)

    def wait(self, seconds: float) -> bool:
        """Sleep in a handler; True when the server is stopping."""
        return self._stop.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handler threads
    block_on_close = True
    router: FakeRouter

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Resets, broken pipes and refused TLS handshakes are what the tests provoke (a client
        # that gives up); a bug in the stand-in itself is still printed.
        if not isinstance(sys.exception(), OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10  # safety net; stop() shuts connections long before

    def setup(self) -> None:
        router = self.server.router
        raw: socket.socket = self.request
        router.track(raw, True)
        if router.tls is not None:
            raw.settimeout(self.timeout)
            # wrap_socket moves the descriptor to the TLS socket: track that one, and only
            # then handshake, so stop() can shut a handshake that never completes.
            tls = router.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            router.track(raw, False)
            router.track(tls, True)
            self.request = tls
            try:
                tls.do_handshake()
            except BaseException:
                router.track(tls, False)
                tls.close()
                raise
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.router.track(self.connection, False)
            if self.server.router.tls is not None:
                self.connection.close()  # socketserver closes only the raw, detached socket

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    # -- request handling -------------------------------------------------------------------

    def _record(self, body: Any) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.router.requests.append(Recorded(self.command, self.path, headers, body))

    def _read_body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw

    def _send_json(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("authorization") == f"Bearer {self.server.router.token}":
            return True
        self._send_json(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def do_GET(self) -> None:
        self._models_endpoint()

    def do_HEAD(self) -> None:
        self._models_endpoint()

    def _models_endpoint(self) -> None:
        self._record(None)
        if self.path != "/v1/models":
            self._send_json(404, {"error": "not found"})
            return
        if not self._authorized():
            return
        behaviour = self.server.router.next_behaviour(chat=False)
        if self._common(behaviour):
            return
        self._send_json(200, self.server.router.catalog)

    def do_POST(self) -> None:
        body = self._read_body()
        self._record(body)
        if self.path != "/v1/chat/completions":
            self._send_json(404, {"error": "not found"})
            return
        if not self._authorized():
            return
        behaviour = self.server.router.next_behaviour(chat=True) or Reply()
        if self._common(behaviour):
            return
        assert isinstance(behaviour, Reply)
        model = body.get("model", DEFAULT_MODEL) if isinstance(body, dict) else DEFAULT_MODEL
        try:
            self._stream(behaviour, model.split(":")[0])
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _common(self, behaviour: Behaviour | None) -> bool:
        """Play a non-streaming behaviour; True when the request is answered."""
        router = self.server.router
        if isinstance(behaviour, Hang):
            router.wait(3600)
            self.close_connection = True
            return True
        if isinstance(behaviour, Status):
            self._send_json(behaviour.code, behaviour.body, behaviour.headers)
            return True
        return False

    # -- streaming --------------------------------------------------------------------------

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, payload: Any, eol: bytes) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(b"data: " + text.encode() + eol + eol)

    def _stream(self, reply: Reply, model: str) -> None:
        router = self.server.router
        if reply.first_byte_delay_s and router.wait(reply.first_byte_delay_s):
            return
        self.send_response(200)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        if reply.provider:
            self.send_header("x-inference-provider", reply.provider)
        self.end_headers()
        eol = b"\r\n" if reply.crlf else b"\n"
        self._chunk(b": keep-alive" + eol + eol)

        def frame(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        words = reply.words if reply.after is None else reply.words[: reply.after]
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            self._event(frame(delta, None), eol)
            if reply.chunk_delay_s and router.wait(reply.chunk_delay_s):
                return
        for index, call in enumerate(reply.tool_calls):
            # As providers do: the head, then the arguments in two pieces.
            half = len(call["arguments"]) // 2
            head = {"index": index, "id": call["id"], "type": "function"}
            pieces = (
                {**head, "function": {"name": call["name"], "arguments": ""}},
                {"index": index, "function": {"arguments": call["arguments"][:half]}},
                {"index": index, "function": {"arguments": call["arguments"][half:]}},
            )
            for piece in pieces:
                self._event(frame({"tool_calls": [piece]}, None), eol)
        if reply.then == "finish":
            self._event(frame({}, "tool_calls" if reply.tool_calls else "stop"), eol)
            if reply.usage:
                usage = {
                    "prompt_tokens": 11,
                    "completion_tokens": len(words),
                    "total_tokens": 11 + len(words),
                }
                self._event({**frame({}, None), "choices": [], "usage": usage}, eol)
            self._event("[DONE]", eol)
            self._chunk(b"")
        elif reply.then == "eof":
            self._chunk(b"")
        elif reply.then == "cut":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif reply.then == "malformed":
            self._chunk(b'data: {"choices": [{"delta": ' + eol + eol)
            self._chunk(b"")
        elif reply.then == "bad_utf8":
            self._chunk(b"data: \xff\xfe" + eol + eol)
            self._chunk(b"")
        elif reply.then == "error":
            payload = reply.error_payload or {
                "error": {"message": "provider overloaded", "type": "server_error"}
            }
            self._event(payload, eol)
            self._chunk(b"")
        elif reply.then == "drip":
            partial = json.dumps(frame({"content": "never completes"}, None)).encode()
            for byte in (b"data: " + partial) * 1000:
                self._chunk(bytes([byte]))
                if router.wait(reply.drip_interval_s):
                    return
        elif reply.then == "hang":
            router.wait(3600)
            self.close_connection = True
