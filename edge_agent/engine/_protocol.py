"""The wire format between the daemon and its engine worker process.

Messages are tuples of plain values (str, int, float, bool, None, bytes, lists, tuples,
dicts) pickled with protocol 5. Unpickling refuses every class lookup, so a worker that
misbehaves (a corrupted model exploiting the runtime, say) cannot make the daemon run code:
only plain data ever crosses the pipe. One message per engine step keeps the overhead per
token to a fraction of a microsecond.

Daemon → worker:
    ("submit", rid, job: dict)        a generation job (see _types.GenerationRequest.to_job)
    ("cancel", rid)                   cancel a job; its KV blocks are freed
    ("evict", nbytes)                 free idle cached lanes (prefix reuse), least recently
                                      used first, until nbytes are freed; all when negative
    ("ping", seq)                     answered by ("pong", seq, stats)
    ("shutdown",)                     finish nothing, exit 0

Worker → daemon:
    ("ready", info: dict)             model loaded; provider, context length, batch size
    ("load_failed", reason: str)      could not load the model on any provider
    ("step", started, deltas, done)   started: [(rid, prompt_tokens)],
                                      deltas: [(rid, text, tool_calls: bool)],
                                      done: [(rid, finish, prompt_tokens, completion_tokens, error)]
    ("pong", seq, stats: dict)

Framing: a 4-byte big-endian length, then the pickle. The daemon reads frames on its event
loop (no threads between the pipe and the streams: each thread hand-off costs a wake-up and
a GIL switch on the time-to-first-token path); the worker, which has nothing else to do,
uses a plain blocking socket. A frame longer than ``MAX_FRAME`` ends the conversation: a
misbehaving worker cannot make the daemon allocate without bound.
"""

from __future__ import annotations

import io
import pickle
import select
import socket
import struct
from typing import Any, NoReturn

__all__ = [
    "MAX_FRAME",
    "BlockingChannel",
    "FrameReader",
    "ProtocolError",
    "decode",
    "encode",
    "frame",
]

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct("!I")


class ProtocolError(Exception):
    """A message from the other side could not be decoded."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> NoReturn:
        raise ProtocolError(f"refused class {module}.{name} in an engine message")


def encode(message: tuple[Any, ...]) -> bytes:
    return pickle.dumps(message, protocol=5)


def decode(data: bytes) -> tuple[Any, ...]:
    try:
        message = _PlainUnpickler(io.BytesIO(data)).load()
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError("malformed engine message") from exc
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise ProtocolError("engine message is not a tagged tuple")
    return message


def _check_size(size: int, limit: int = MAX_FRAME) -> None:
    if size > limit:
        raise ProtocolError(f"an engine frame of {size} bytes exceeds {limit}")


def frame(message: tuple[Any, ...]) -> bytes:
    """``message`` encoded and prefixed with its length, ready for the socket."""
    body = encode(message)
    _check_size(len(body))
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Splits bytes as they arrive (in any pieces) into whole decoded messages."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        self._buffer += data
        messages = []
        buffer, offset = self._buffer, 0
        while len(buffer) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, offset)
            _check_size(size, self._max)
            end = offset + _HEADER.size + size
            if len(buffer) < end:
                break
            messages.append(decode(bytes(buffer[offset + _HEADER.size : end])))
            offset = end
        del buffer[:offset]
        return messages


class BlockingChannel:
    """The worker's end: whole messages over a blocking stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        # poll(), not select(): the descriptor keeps the daemon's number, which may be > 1023.
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def send(self, message: tuple[Any, ...]) -> None:
        self._sock.sendall(frame(message))

    def recv(self) -> tuple[Any, ...]:
        (size,) = _HEADER.unpack(self._read_exactly(_HEADER.size))
        _check_size(size)
        return decode(self._read_exactly(size))

    def poll(self, timeout: float | None) -> bool:
        """Whether a message has (started to) arrive within ``timeout`` seconds."""
        return bool(self._poller.poll(None if timeout is None else timeout * 1000))

    def close(self) -> None:
        self._sock.close()

    def _read_exactly(self, size: int) -> bytes:
        data = bytearray(size)
        view = memoryview(data)
        got = 0
        while got < size:
            n = self._sock.recv_into(view[got:])
            if n == 0:
                raise EOFError("the other end closed the engine channel")
            got += n
        return bytes(data)
