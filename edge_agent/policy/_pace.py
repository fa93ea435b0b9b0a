"""How long a local answer takes on this box, measured, for budgeting client deadlines.

The cloud may keep a request only as long as the client's deadline still leaves time for a
local answer after it (a late cloud falls back to local). That time is estimated from the
answers the local model actually gave: an exponentially weighted mean of the time to the
first token (queueing included) and of the time per further token, times the tokens the
request may generate (``max_tokens``, else the typical answer length seen), plus a reserve.
Before the first measurement the defaults assume a modest CPU box.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["LocalPace", "PaceEstimate"]

_WEIGHT = 0.2  # each new answer moves the means by a fifth: a few answers adapt, one outlier not
_RESERVE_S = 0.5  # scheduling, the gRPC hop, a busy CPU, the local model's own variance
_RESERVE_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class PaceEstimate:
    first_token_s: float
    per_token_s: float
    typical_tokens: float
    samples: int


class LocalPace:
    """Thread-safe running estimate; :meth:`observe` after each local answer."""

    def __init__(
        self,
        *,
        first_token_s: float = 0.5,
        per_token_s: float = 0.02,
        typical_tokens: float = 64.0,
    ) -> None:
        self._lock = threading.Lock()
        self._first = first_token_s
        self._per_token = per_token_s
        self._tokens = typical_tokens
        self._samples = 0

    @property
    def estimate(self) -> PaceEstimate:
        with self._lock:
            return PaceEstimate(self._first, self._per_token, self._tokens, self._samples)

    def observe(self, first_token_s: float, total_s: float, completion_tokens: int) -> None:
        """One finished local answer: time to first token, total time, tokens generated."""
        if first_token_s < 0 or total_s < first_token_s or completion_tokens < 1:
            return
        per_token = (total_s - first_token_s) / max(completion_tokens - 1, 1)
        with self._lock:
            # The first measurement replaces the guess outright.
            w = 1.0 if self._samples == 0 else _WEIGHT
            self._first += w * (first_token_s - self._first)
            self._per_token += w * (per_token - self._per_token)
            self._tokens += w * (completion_tokens - self._tokens)
            self._samples += 1

    def answer_s(self, max_tokens: int | None, queue_wait_s: float = 0.0) -> float:
        """Expected seconds for a whole local answer of up to ``max_tokens``, with reserve."""
        e = self.estimate
        tokens = float(max_tokens) if max_tokens is not None else e.typical_tokens
        base = max(queue_wait_s, 0.0) + e.first_token_s + e.per_token_s * max(tokens - 1, 0)
        return base * (1 + _RESERVE_SHARE) + _RESERVE_S
