"""What every hostile suite shares: the tally it fills, the leak detector, a daemon for it.

The suites are plain functions over a running daemon that count what went wrong instead
of raising, so the same code serves the bounded pytest run (which asserts every count is
zero) and ``scripts/hostile.py --full`` (which prints the counts as a table).
"""

from __future__ import annotations

import dataclasses
import gc
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

_TESTS = Path(__file__).resolve().parent.parent
for _folder in ("daemon", "cloud", "bundles", "hostile"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from daemon_harness import RunningAgent, make_config  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from edge_agent.config import AgentConfig  # noqa: E402
from edge_agent.tls import RateLimit  # noqa: E402

MIB = 1024 * 1024

# Codes a case may end with when the daemon behaves: INTERNAL is a bug, UNKNOWN means an
# exception escaped our mapping (grpcio then writes the exception's class into the details).
NEVER = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})


@dataclass
class Tally:
    """Counts of one suite; every count but ``cases`` must stay zero."""

    suite: str
    cases: int = 0
    crashes: int = 0
    wrong_status: int = 0
    leaks: int = 0
    hung: int = 0
    lost: int = 0
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def fail(self, kind: str, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.notes) < 20:
            self.notes.append(f"{kind}: {what}")

    @property
    def clean(self) -> bool:
        return not (self.crashes or self.wrong_status or self.leaks or self.hung or self.lost)

    def summary(self) -> str:
        counts = ", ".join(
            f"{k} {getattr(self, k)}"
            for k in ("cases", "crashes", "wrong_status", "leaks", "hung", "lost")
        )
        return f"{self.suite}: {counts}; " + "; ".join(self.notes[:10])


# -- what a client must never read ------------------------------------------------------------

_LEAK_PATTERNS = [
    re.compile(r"Traceback|File \"|line \d+, in "),
    re.compile(r"<class '|\b[A-Z][A-Za-z]*(Error|Exception)\b"),
    re.compile(r"\.py\b"),
    re.compile(r"(^|[\s'\"(=])/(tmp|work|home|var|etc|run|opt|usr|proc)/"),
]


def leaked_detail(details: str | None, secrets: tuple[str, ...] = ()) -> str | None:
    """The part of a status message that reveals internals, or None when it is clean."""
    text = details or ""
    for pattern in _LEAK_PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(0)
    for secret in secrets:
        if secret and secret in text:
            return "a secret"
    return None


# -- the daemon under test ------------------------------------------------------------------------


def hostile_config(tmp: Path, **engine: Any) -> AgentConfig:
    """The harness config with per-client rate limits off.

    Every loopback caller shares one anonymous bucket (20/s); a fuzzer or 64 soak clients
    would only measure the limiter, which tests/network already proves.
    """
    config: AgentConfig = make_config(tmp, **engine)
    off = RateLimit(requests_per_s=0.0, burst=0)
    auth = dataclasses.replace(config.auth, client_rate=off, operator_rate=off)
    return dataclasses.replace(config, auth=auth)


def admin_target(running: RunningAgent) -> str:
    return f"unix:{running.agent.config.tls.admin_socket}"


def health_ok(channel: grpc.Channel, timeout: float = 10.0) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def engine_idle(running: RunningAgent, timeout_s: float = 20.0) -> dict[str, int] | None:
    """Poll the worker until it holds no request; its last stats if it never got there."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats: dict[str, int] = running.call(running.agent.engine.probe())
        busy = stats["active"] or stats["waiting"] or stats["pending_in_engines"]
        if not busy and not running.agent.engine.status().active_requests:
            return None
        if time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def rss_bytes(pid: int | None = None, *, collect: bool = True) -> int:
    """RSS after a full collection; ``collect=False`` while latency is measured: the daemon
    under test shares this process, and a full pass here stalls its loop for tens of ms."""
    if collect:
        gc.collect()
    rss: int = psutil.Process(pid).memory_info().rss
    return rss


def worker_pid(running: RunningAgent) -> int:
    info = running.agent.engine.info
    assert info is not None, "the engine is not running"
    return info.pid


def loop_tasks(running: RunningAgent) -> int:
    """Tasks alive on the agent's loop (a leaked stream leaves its task behind)."""

    async def count() -> int:
        import asyncio

        return len(asyncio.all_tasks())

    return int(running.call(count()))


class LoopErrors:
    """Collects what the daemon's loop reports as unhandled (e.g. 'Task exception was never
    retrieved'): an exception nobody handled is a bug even when the client saw a clean status.
    """

    def __init__(self, running: RunningAgent) -> None:
        self.running = running
        self.messages: list[str] = []
        self.upstream = 0
        running.loop.call_soon_threadsafe(running.loop.set_exception_handler, self._handler)

    def _handler(self, loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if type(exc).__name__ == "ExecuteBatchError":
            # grpcio's own task writing a response when the client has just cancelled
            # (upstream, cf. grpc/grpc#31570): no code of ours runs there, the call is
            # already over for the client, and the server carries on. Counted, not hidden.
            self.upstream += 1
            return
        self.messages.append(f"{context.get('message')}: {exc!r}")
        loop.default_exception_handler(context)

    def drain(self, tally: Tally) -> None:
        """Count what was reported since the last drain (after a GC pass finalised tasks)."""
        gc.collect()
        self.running.call(_yield_once())
        for message in self.messages:
            tally.fail("crashes", f"unhandled on the daemon loop: {message[:200]}")
        self.messages.clear()
        if self.upstream:
            seen = tally.figures.get("grpcio_write_after_cancel", 0)
            tally.figures["grpcio_write_after_cancel"] = seen + self.upstream
            self.upstream = 0

    def close(self) -> None:
        self.running.loop.call_soon_threadsafe(self.running.loop.set_exception_handler, None)


async def _yield_once() -> None:
    import asyncio

    await asyncio.sleep(0)
