"""The wire format between the daemon and its engine worker process.

Messages are tuples of plain values (str, int, float, bool, None, bytes, lists, tuples,
dicts) pickled with protocol 5. Unpickling refuses every class lookup, so a worker that
misbehaves (a corrupted model exploiting the runtime, say) cannot make the daemon run code:
only plain data ever crosses the pipe. One message per engine step keeps the overhead per
token to a fraction of a microsecond.

Daemon → worker:
    ("submit", rid, job: dict)        a generation job (see _types.GenerationRequest.to_job)
    ("cancel", rid)                   cancel a job; its KV blocks are freed
    ("ping", seq)                     answered by ("pong", seq, stats)
    ("shutdown",)                     finish nothing, exit 0

Worker → daemon:
    ("ready", info: dict)             model loaded; provider, context length, batch size
    ("load_failed", reason: str)      could not load the model on any provider
    ("step", started, deltas, done)   started: [(rid, prompt_tokens)], deltas: [(rid, text)],
                                      done: [(rid, finish, prompt_tokens, completion_tokens, error)]
    ("pong", seq, stats: dict)
"""

from __future__ import annotations

import io
import pickle
from typing import Any, NoReturn

__all__ = ["ProtocolError", "decode", "encode"]


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
