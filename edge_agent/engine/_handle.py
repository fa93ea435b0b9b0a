"""One engine worker process as seen from the daemon: start, talk, stop, kill.

The daemon's end of the socket is non-blocking and served by the event loop itself: frames
are read when the loop sees the socket readable, and written at once, with only what the
kernel buffer cannot take kept for when the socket drains. A worker busy in a long step
therefore never blocks the loop, and no thread hand-off sits on the path of a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from edge_agent._malloc import huge_page_malloc, huge_page_malloc_applies
from edge_agent._offline import offline_environment
from edge_agent.engine._protocol import FrameReader, ProtocolError, frame
from edge_agent.engine._types import EngineInfo

__all__ = ["WorkerHandle"]

_log = logging.getLogger(__name__)
_READ_SIZE = 256 * 1024

OnMessage = Callable[["WorkerHandle", tuple[Any, ...]], None]
OnExit = Callable[["WorkerHandle"], None]


class WorkerHandle:
    """A running (or starting) worker process and the loop's end of its socket."""

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
        self.info: EngineInfo | None = None
        self.ready: asyncio.Future[EngineInfo] = loop.create_future()
        self.exited = asyncio.Event()
        self.retiring = False  # stopped on purpose: its exit is not a crash
        self.streams: set[int] = set()
        self._frames = FrameReader()
        self._unsent = bytearray()
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None
        # A fresh interpreter (not fork: the daemon has threads and an event loop; not
        # multiprocessing's spawn: it would re-import the caller's __main__).
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = offline_environment()
        if spec.get("huge_page_malloc", True):
            env = huge_page_malloc(env)
        self.huge_pages = huge_page_malloc_applies(env)  # what the start-up log reports
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.engine._worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            # Set before the interpreter starts, so before onnxruntime (or malloc) can load.
            env=env,
        )
        theirs.close()
        ours.setblocking(False)
        self._sock = ours
        loop.add_reader(ours.fileno(), self._on_readable)
        self.send(("spec", spec))

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def send(self, message: tuple[Any, ...]) -> None:
        if self._closed:
            return  # the exit is being reported; the caller's stream fails with it
        data = frame(message)
        if not self._unsent:
            sent = self._send_some(data)
            if sent is None or sent == len(data):
                return
            data = data[sent:]
            self._loop.add_writer(self._sock.fileno(), self._on_writable)
        self._unsent += data

    def _on_writable(self) -> None:
        sent = self._send_some(self._unsent)
        if sent is None:
            return
        del self._unsent[:sent]
        if not self._unsent:
            self._loop.remove_writer(self._sock.fileno())

    def _send_some(self, data: bytes | bytearray) -> int | None:
        """Bytes the kernel took now (0 when its buffer is full); None: the socket is gone."""
        try:
            return self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self._close()
            return None

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close()
            return
        try:
            messages = self._frames.feed(data)
        except ProtocolError:
            _log.error("engine worker sent a malformed message; stopping it")
            self.kill()
            self._close()
            return
        for message in messages:
            self._dispatch(message)

    def _close(self) -> None:
        """The conversation is over: stop watching the socket and reap the process."""
        if self._closed:
            return
        self._closed = True
        fd = self._sock.fileno()
        self._loop.remove_reader(fd)
        if self._unsent:
            self._loop.remove_writer(fd)
            self._unsent.clear()
        self._sock.close()
        self._reaper = self._loop.create_task(self._reap(), name="engine-reap")

    async def _reap(self) -> None:
        # The process may take a moment to exit after closing its end; wait off the loop.
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.process.wait, 5)
        self._exited()

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

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
