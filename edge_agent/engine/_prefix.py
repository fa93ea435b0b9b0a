"""Prefix reuse: idle Generators that keep their KV cache for the next turn.

A request that ran on an og.Generator leaves, when it ends, a KV cache holding its prompt
and answer. The next turn of the same conversation (or the next request under the same long
system prompt) starts with exactly those tokens. So the finished Generator is kept, idle,
as a *cached lane*; a later request whose prompt shares a long enough prefix with it takes
the lane over, rewinds it to the common length (``Generator.rewind_to``) and reads only the
rest. This is llama.cpp's server "slot" design; see docs/ARCHITECTURE.md "Prefix reuse" for
why not prefix lanes.

Rules that keep it correct and private:

* Reuse only within one *partition* (the authenticated client and the request's data
  class, set by the daemon): no client can learn another's prompt from a faster first token.
* Reuse only between requests whose Generator settings are equal (sampling is fixed when a
  Generator is made); never for JSON-schema guidance (the grammar's state would not rewind
  with the KV), seeded sampling (the generator's random state would continue, not restart)
  or ``min_tokens`` (an absolute ``min_length`` of the first request).
* At most ``engine.prefix_cache_lanes`` idle lanes, least recently used evicted first; the
  daemon evicts more when admission or memory pressure needs the room.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CachedLane", "PrefixCache", "common_prefix", "sampling_key"]

# A hit must cover at least this share of the new prompt: taking a lane over for a short
# common start would also throw away the rest of what it holds, for little gain.
_MIN_SHARE = 0.5
_MIN_TOKENS = 16


def common_prefix(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def sampling_key(job: dict[str, Any]) -> tuple[Any, ...] | None:
    """What a Generator fixes at creation, or None when the job may not share a lane."""
    if job["json_schema"] or int(job.get("min_tokens") or 0) > 0:
        return None
    temperature = float(job["temperature"])
    if temperature <= 0:
        return ("greedy",)
    if job["seed"] is not None:
        return None
    return ("sample", temperature, job["top_p"], job["top_k"])


@dataclass
class CachedLane:
    """An idle Generator and the token ids its KV cache holds."""

    generator: Any  # og.Generator
    tokens: np.ndarray[Any, np.dtype[np.int32]]
    partition: str
    key: tuple[Any, ...]
    max_length: int
    kv_bytes: int


class PrefixCache:
    """The idle cached lanes of one worker, least recently used first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lanes: OrderedDict[int, CachedLane] = OrderedDict()
        self._ids = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._lanes)

    @property
    def kv_bytes(self) -> int:
        return sum(lane.kv_bytes for lane in self._lanes.values())

    def put(self, lane: CachedLane) -> None:
        """Keep ``lane``; beyond the capacity the least recently used go."""
        if self.capacity <= 0:
            return
        self._ids += 1
        self._lanes[self._ids] = lane
        while len(self._lanes) > self.capacity:
            self._lanes.popitem(last=False)
            self.evicted += 1

    def take(
        self,
        partition: str,
        key: tuple[Any, ...],
        tokens: np.ndarray[Any, np.dtype[np.int32]],
        needed_length: int,
    ) -> tuple[CachedLane, int] | None:
        """The lane of ``partition`` and ``key`` sharing the longest prefix with ``tokens``,
        removed from the cache, and how many tokens to keep; None when none is worth it."""
        best: tuple[int, int] | None = None
        for lane_id, lane in self._lanes.items():
            if lane.partition != partition or lane.key != key or lane.max_length < needed_length:
                continue
            # At least one prompt token is read again: its logits give the first answer token.
            keep = min(common_prefix(lane.tokens, tokens), len(tokens) - 1)
            if best is None or keep > best[1]:
                best = (lane_id, keep)
        if best is None or best[1] < max(_MIN_TOKENS, _MIN_SHARE * len(tokens)):
            return None
        return self._lanes.pop(best[0]), best[1]

    def evict(self, nbytes: int) -> int:
        """Drop least recently used lanes until ``nbytes`` are freed (all for a negative
        ``nbytes``); returns the bytes freed."""
        freed = 0
        while self._lanes and (nbytes < 0 or freed < nbytes):
            _, lane = self._lanes.popitem(last=False)
            freed += lane.kv_bytes
            self.evicted += 1
        return freed
