"""Is the engine worker alive? Answering pings, or at least burning CPU on a long step.

The worker answers pings only between steps, and one step of a 24B model on a CPU (a long
prompt's prefill) can take a minute. So a missed ping alone proves nothing; a worker that
misses pings *and* uses no CPU is wedged: stopped (SIGSTOP, a debugger), deadlocked, or
blocked in a read that never returns. That is what this tells apart, from /proc.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["LivenessWatch", "read_cpu_ticks"]

_STOPPED_STATES = frozenset("TtZX")


def read_cpu_ticks(pid: int) -> int | None:
    """User + system CPU ticks of ``pid``; None when it is stopped, a zombie or gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 13 or fields[0].decode() in _STOPPED_STATES:
        return None
    return int(fields[11]) + int(fields[12])


@dataclass(slots=True)
class LivenessWatch:
    """Tracks one worker; ``wedged_for`` says how long it has shown no sign of life."""

    pid: int
    last_sign: float = field(default_factory=time.monotonic)
    _ticks: int | None = None

    def answered(self) -> None:
        self.last_sign = time.monotonic()

    def missed(self) -> float:
        """A ping went unanswered: seconds since the last sign of life (0 if it is computing)."""
        ticks = read_cpu_ticks(self.pid)
        if ticks is not None and (self._ticks is None or ticks > self._ticks):
            # Busy inside a step: as good as an answer.
            self.last_sign = time.monotonic()
        self._ticks = ticks
        return time.monotonic() - self.last_sign
