"""One engine worker process as seen from the daemon: start, talk, stop, kill.

A reader thread blocks on the pipe and hands each message to the event loop; a writer
thread drains an outgoing queue, so a worker busy in a long step never blocks the loop on a
full pipe. Both threads release the GIL while they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from edge_agent.engine._protocol import ProtocolError, decode, encode
from edge_agent.engine._types import EngineInfo

__all__ = ["WorkerHandle"]

_log = logging.getLogger(__name__)

OnMessage = Callable[["WorkerHandle", tuple[Any, ...]], None]
OnExit = Callable[["WorkerHandle"], None]


class WorkerHandle:
    """A running (or starting) worker process and its two pipe threads."""

    def __init__(
        self,
        spec: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        on_message: OnMessage,
        on_exit: OnExit,
    ) -> None:
        self.spec = spec
        self._loop = loop
        self._on_message = on_message
        self._on_exit = on_exit
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.info: EngineInfo | None = None
        self.ready: asyncio.Future[EngineInfo] = loop.create_future()
        self.exited = asyncio.Event()
        self.retiring = False  # stopped on purpose: its exit is not a crash
        self.streams: set[int] = set()
        # A fresh interpreter (not fork: the daemon has threads and an event loop; not
        # multiprocessing's spawn: it would re-import the caller's __main__).
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.engine._worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self.send(("spec", spec))
        self._reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self._writer = threading.Thread(target=self._write, name="engine-writer", daemon=True)
        self._reader.start()
        self._writer.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def send(self, message: tuple[Any, ...]) -> None:
        self._outbox.put(encode(message))

    def _read(self) -> None:
        try:
            while True:
                message = decode(self._conn.recv_bytes())
                self._loop.call_soon_threadsafe(self._dispatch, message)
        except (EOFError, OSError):
            pass
        except ProtocolError:
            _log.error("engine worker sent a malformed message; stopping it")
            with contextlib.suppress(Exception):
                self.process.kill()
        finally:
            # Reap the process off the loop, then report the exit on the loop.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._exited)

    def _write(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            try:
                self._conn.send_bytes(item)
            except (OSError, ValueError):
                return

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        if message[0] == "ready" and not self.ready.done():
            self.info = EngineInfo.from_wire(message[1])
            self.ready.set_result(self.info)
            return
        if message[0] == "load_failed" and not self.ready.done():
            self.ready.set_exception(RuntimeError(str(message[1])))
            return
        self._on_message(self, message)

    def _exited(self) -> None:
        if not self.ready.done():
            self.ready.set_exception(
                RuntimeError(f"engine worker exited with code {self.process.returncode}")
            )
        self._outbox.put(None)
        self.exited.set()
        self._on_exit(self)

    async def stop(self, timeout_s: float) -> None:
        """Ask the worker to exit; kill it if it has not within ``timeout_s``."""
        self.retiring = True
        if not self.exited.is_set():
            self.send(("shutdown",))
            try:
                await asyncio.wait_for(self.exited.wait(), timeout_s)
            except TimeoutError:
                self.kill()
                await self.exited.wait()
        with contextlib.suppress(OSError):
            self._conn.close()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
