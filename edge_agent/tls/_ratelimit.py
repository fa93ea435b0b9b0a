"""Per-identity token buckets for request rate limits."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.tls._config import AuthConfig, RateLimit
from edge_agent.tls._identity import Identity

__all__ = ["RateLimiter", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; return 0 when allowed, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per client id, sized by the identity's role.

    Buckets that have refilled are equivalent to new ones, so they are dropped when the map
    grows past ``max_clients``; memory stays bounded whatever the callers do.
    """

    def __init__(
        self,
        config: AuthConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self._config = config
        self._clock = clock
        self._max = max_clients
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, identity: Identity) -> int:
        """0 when the call may proceed, else the retry pushback in milliseconds (>= 1)."""
        limit: RateLimit = self._config.rate_for(identity.role)
        if limit.unlimited:
            return 0
        now = self._clock()
        bucket = self._buckets.get(identity.client_id)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._sweep(now)
            bucket = TokenBucket(limit.requests_per_s, float(limit.burst), float(limit.burst), now)
            self._buckets[identity.client_id] = bucket
        wait = bucket.take(now)
        return 0 if wait == 0 else max(1, math.ceil(wait * 1000))

    def _sweep(self, now: float) -> None:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.updated) * b.rate >= b.burst
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max:
            # Everyone is busy: forget the least recently seen half rather than grow.
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k].updated)
            for key in oldest[: len(oldest) // 2]:
                del self._buckets[key]
