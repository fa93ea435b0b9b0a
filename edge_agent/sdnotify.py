"""systemd service notifications (``sd_notify``) with plain datagrams, and a watchdog loop.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for the abstract namespace)
to a ``Type=notify`` service; each notification is one ``AF_UNIX``/``SOCK_DGRAM`` datagram of
newline-separated ``KEY=VALUE`` lines. Outside systemd the variable is absent and every call is
a cheap no-op, so the daemon uses the same code under systemd, in a container and in tests.

:class:`WatchdogLoop` sends ``WATCHDOG=1`` only while the daemon is demonstrably alive: its
own wake-ups arrive on time (the event loop is not blocked) and every registered liveness
check passes. A bare timer would keep a wedged daemon alive forever; this one lets systemd's
``WatchdogSec=`` restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "LivenessCheck",
    "SystemdNotifier",
    "WatchdogLoop",
    "WatchdogVerdict",
    "extending_timeout",
]

_log = logging.getLogger(__name__)

# A check answers "is this part alive?"; sync or async, it must be cheap.
LivenessCheck = Callable[[], bool | Awaitable[bool]]


def _address(raw: str) -> str | bytes:
    if raw.startswith("@"):
        # Abstract namespace: the leading '@' stands for a NUL byte.
        return b"\0" + raw[1:].encode()
    return raw


class SystemdNotifier:
    """Sends notifications to systemd; a no-op when ``NOTIFY_SOCKET`` is absent.

    ``env`` defaults to :data:`os.environ`, read once here (never at import). Sending never
    raises: a lost notification must not take the daemon down, so failures are logged once
    and reported by the ``bool`` result.
    """

    __slots__ = ("_address", "_pid", "_sock", "_warned", "_watchdog_usec")

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._pid = os.getpid()
        self._warned = False
        self._sock: socket.socket | None = None
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith(("/", "@")) and len(raw) > 1:
            self._address = _address(raw)
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        elif raw:
            # e.g. "vsock:..." (systemd >= 253 in VMs): not something this daemon runs under.
            _log.warning("NOTIFY_SOCKET has an unsupported address family; notifications off")
        self._watchdog_usec = self._parse_watchdog(env)

    def _parse_watchdog(self, env: Mapping[str, str]) -> int | None:
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = env.get("WATCHDOG_PID")
        # The variables may have been inherited by a child: only the named PID pings.
        if pid is not None and pid != str(self._pid):
            return None
        return usec

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given."""
        return self._sock is not None

    @property
    def watchdog_usec(self) -> int | None:
        """The watchdog interval systemd expects (``WatchdogSec=``), or None when disabled."""
        return self._watchdog_usec if self.enabled else None

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True when it was delivered."""
        if self._sock is None or self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            # A newline would start a new assignment: STATUS text must stay one line.
            text = str(value).replace("\n", " ").replace("\r", " ")
            lines.append(f"{key}={text}")
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                _log.warning("sd_notify failed: %s", exc.strerror or type(exc).__name__)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """The daemon is serving (model loaded, listeners open)."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def reloading(self, status: str | None = None) -> bool:
        """Reload began; systemd >= 253 wants the monotonic time to order it against READY."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        if status is None:
            return self.notify(RELOADING=1, MONOTONIC_USEC=usec)
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec, STATUS=status)

    def extend_timeout(self, usec: int) -> bool:
        """Ask for ``usec`` more microseconds from now before the start/stop timeout fires."""
        if usec <= 0:
            raise ValueError("usec must be positive")
        return self.notify(EXTEND_TIMEOUT_USEC=usec)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __repr__(self) -> str:
        return f"SystemdNotifier(enabled={self.enabled}, watchdog_usec={self.watchdog_usec})"


@dataclass(frozen=True, slots=True)
class WatchdogVerdict:
    """One round of the watchdog: pinged, or why not."""

    pinged: bool
    lag_s: float
    failed_check: str | None = None

    @property
    def reason(self) -> str:
        if self.pinged:
            return "alive"
        if self.failed_check is not None:
            return f"liveness check {self.failed_check!r} failed"
        return f"event loop blocked ({self.lag_s:.3f}s late)"


class WatchdogLoop:
    """Pings systemd's watchdog at half its interval while the daemon proves it is alive.

    Each round sleeps ``period`` seconds and measures how late it woke up: a late wake-up
    means something blocked the event loop, and that round sends nothing. Then every
    registered check runs (each bounded by a timeout); one failure also withholds the ping.
    When pings stop, systemd restarts the service after ``WatchdogSec=``.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        *,
        period_s: float | None = None,
        max_lag_s: float | None = None,
        check_timeout_s: float | None = None,
        on_verdict: Callable[[WatchdogVerdict], None] | None = None,
    ) -> None:
        usec = notifier.watchdog_usec
        if period_s is None and usec is not None:
            period_s = usec / 2_000_000
        self._notifier = notifier
        self._period = period_s
        # Half a period late is far beyond scheduler noise and leaves systemd margin.
        self._max_lag = max_lag_s if max_lag_s is not None else (period_s or 0.0) / 2
        self._check_timeout = check_timeout_s if check_timeout_s is not None else self._max_lag
        self._checks: dict[str, LivenessCheck] = {}
        self._on_verdict = on_verdict
        self._task: asyncio.Task[None] | None = None
        self._last: WatchdogVerdict | None = None

    @property
    def active(self) -> bool:
        """Whether systemd asked for a watchdog (or a period was given)."""
        return self._period is not None and self._notifier.enabled

    @property
    def last_verdict(self) -> WatchdogVerdict | None:
        return self._last

    def add_check(self, name: str, check: LivenessCheck) -> None:
        """Register a liveness check; it must return True when its part is alive."""
        if name in self._checks:
            raise ValueError(f"liveness check {name!r} already registered")
        self._checks[name] = check

    def remove_check(self, name: str) -> None:
        self._checks.pop(name, None)

    async def _run_check(self, check: LivenessCheck) -> bool:
        try:
            async with asyncio.timeout(self._check_timeout):
                result = check()
                if inspect.isawaitable(result):
                    result = await result
        except Exception:
            # A crashing or hanging check means "not alive", never a crashed watchdog.
            return False
        return result is True

    async def round(self, lag_s: float) -> WatchdogVerdict:
        """Decide one round given how late this round woke up, and ping if alive."""
        failed: str | None = None
        for name, check in list(self._checks.items()):
            if not await self._run_check(check):
                failed = name
                break
        alive = failed is None and lag_s <= self._max_lag
        if alive:
            self._notifier.watchdog()
        verdict = WatchdogVerdict(pinged=alive, lag_s=lag_s, failed_check=failed)
        if not alive and (self._last is None or self._last.pinged):
            _log.warning("watchdog withheld: %s", verdict.reason)
        elif alive and self._last is not None and not self._last.pinged:
            _log.info("watchdog resumed")
        self._last = verdict
        if self._on_verdict is not None:
            self._on_verdict(verdict)
        return verdict

    async def run(self) -> None:
        """Run until cancelled; returns at once when no watchdog is configured."""
        if not self.active or self._period is None:
            return
        period = self._period
        loop = asyncio.get_running_loop()
        lag = 0.0
        while True:
            await self.round(lag)
            started = loop.time()
            await asyncio.sleep(period)
            lag = max(0.0, loop.time() - started - period)

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="sd-watchdog")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def extending_timeout(
    notifier: SystemdNotifier, *, every_s: float = 10.0, extend_usec: int = 30_000_000
) -> AsyncIterator[None]:
    """Keep pushing systemd's start (or stop) timeout out while the body runs.

    For work of unknown length such as loading a large model: every ``every_s`` seconds the
    deadline moves to ``extend_usec`` from now, so a hung load still times out soon after it
    stops making the event loop turn.
    """
    if extend_usec <= every_s * 1_000_000:
        raise ValueError("extend_usec must exceed the refresh interval")

    async def refresh() -> None:
        while True:
            notifier.extend_timeout(extend_usec)
            await asyncio.sleep(every_s)

    task = asyncio.get_running_loop().create_task(refresh(), name="sd-extend-timeout")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
