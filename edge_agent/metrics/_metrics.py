"""The agent's Prometheus metrics, on a registry of their own.

Event families (requests, tokens, latencies, restarts, escalations) are recorded through typed
methods; state families (pressure, memory, queue) come from the latest snapshot at scrape time
(``_collector``). Label values are checked and capped: no free text (prompts, tokens, client
names) can become a label, and no label can grow without bound.
"""

from __future__ import annotations

import logging
import re
import threading
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from edge_agent.metrics._collector import SnapshotCollector
from edge_agent.pressure import AdmissionStats, PressureSnapshot

__all__ = ["Metrics"]

_log = logging.getLogger(__name__)

_P = "edge_agent_"
# Short identifiers only: rules out prompt text, tokens, paths, e-mail addresses, URLs.
_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,47}")
_INFO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,95}")
# Beyond this many distinct values a label collapses to "other" (cardinality guard).
_MAX_VALUES_PER_LABEL = 32

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _version() -> str:
    try:
        return metadata.version("edge-agent")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """All metric families of one daemon; ``registry`` is what the HTTP endpoint serves."""

    def __init__(self, *, version: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {}
        self._requests = Counter(
            _P + "requests", "Finished requests.", ["outcome", "destination"], registry=r
        )
        self._tokens = Counter(
            _P + "tokens", "Tokens processed.", ["direction", "destination"], registry=r
        )
        self._ttft = Histogram(
            _P + "time_to_first_token_seconds",
            "Time from admission to the first streamed token.",
            ["destination"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._token_latency = Histogram(
            _P + "token_latency_seconds",
            "Mean time per generated token after the first, one observation per request.",
            ["destination"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self._duration = Histogram(
            _P + "request_duration_seconds",
            "Wall time of a request from arrival to its last message.",
            ["destination"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._restarts = Counter(
            _P + "engine_restarts", "Times the engine worker was restarted.", registry=r
        )
        self._regrouped = Counter(
            _P + "engine_regrouped_requests",
            "Running requests moved into a fresh lane's batch (a burst batched as one).",
            registry=r,
        )
        self._prefill_chunks = Counter(
            _P + "engine_prefill_chunks",
            "Prompt chunks read between other streams' steps (chunked prefill).",
            registry=r,
        )
        self._prefilling = Gauge(
            _P + "engine_prefilling_requests",
            "Requests whose long prompt is being read in chunks now.",
            registry=r,
        )
        self._prefix = Counter(
            _P + "engine_prefix_cache_requests",
            "Requests that could reuse a cached lane's KV (prefix reuse), by result.",
            ["result"],
            registry=r,
        )
        self._prefix_reused = Counter(
            _P + "engine_prefix_reused_tokens",
            "Prompt tokens taken from a cached lane instead of being read again.",
            registry=r,
        )
        self._prompt_read = Counter(
            _P + "engine_prompt_tokens_read",
            "Prompt tokens the engine ran through the model (reused ones not counted).",
            registry=r,
        )
        self._prefix_evictions = Counter(
            _P + "engine_prefix_cache_evictions",
            "Cached lanes freed for room (capacity, admission or memory pressure).",
            registry=r,
        )
        self._cached_lanes = Gauge(
            _P + "engine_prefix_cached_lanes", "Idle lanes holding a reusable KV cache.",
            registry=r,
        )  # fmt: skip
        self._cached_bytes = Gauge(
            _P + "engine_prefix_cached_kv_bytes",
            "KV cache the idle cached lanes hold (freed first when room is needed).",
            registry=r,
        )
        self._lane_kv = Gauge(
            _P + "engine_lane_kv_bytes",
            "KV cache the Engine lanes keep allocated (batches running, one warm lane at rest).",
            registry=r,
        )
        self._escalations = Counter(
            _P + "escalations", "Requests sent to the cloud instead of the box.", ["reason"],
            registry=r,
        )  # fmt: skip
        self._budget_tokens = Gauge(
            _P + "budget_used_tokens", "Cloud tokens used in the current budget window.",
            registry=r,
        )  # fmt: skip
        self._budget_usd = Gauge(
            _P + "budget_used_usd", "Cloud spend in the current budget window, in USD.",
            registry=r,
        )  # fmt: skip
        self._connectivity = Gauge(
            _P + "connectivity_state",
            "1 for the current connectivity state of the cloud route, 0 for the others.",
            ["state"],
            registry=r,
        )
        self._connectivity_states: set[str] = set()
        self._connectivity_reason = Gauge(
            _P + "connectivity_reason",
            "1 for why the cloud route is in its state (account_exhausted, rate_limited, ...).",
            ["reason"],
            registry=r,
        )
        self._connectivity_reasons: set[str] = set()
        self._model = Gauge(
            _P + "model_info", "The model the local engine serves.",
            ["model", "version", "provider"], registry=r,
        )  # fmt: skip
        build = Gauge(_P + "build_info", "Agent version.", ["version"], registry=r)
        build.labels(self._info(version or _version())).set(1)
        self._collector = SnapshotCollector()
        r.register(self._collector)

    # -- label hygiene ----------------------------------------------------------------------

    def _label(self, kind: str, value: str) -> str:
        if not _LABEL_RE.fullmatch(value):
            _log.warning("metrics: refused a malformed %s label value", kind)
            return "invalid"
        with self._lock:
            seen = self._seen.setdefault(kind, set())
            if value in seen:
                return value
            if len(seen) >= _MAX_VALUES_PER_LABEL:
                return "other"
            seen.add(value)
        return value

    @staticmethod
    def _info(value: str) -> str:
        return value if _INFO_RE.fullmatch(value) else "invalid"

    # -- events -----------------------------------------------------------------------------

    def request_finished(
        self,
        outcome: str,
        destination: str,
        tokens_in: int = 0,
        tokens_out: int = 0,
        ttft_s: float | None = None,
        per_token_s: float | None = None,
        duration_s: float | None = None,
    ) -> None:
        """One request ended; ``outcome`` like ``ok``, ``error``, ``cancelled``,
        ``resource_exhausted``; ``destination`` like ``local`` or ``cloud``."""
        outcome = self._label("outcome", outcome)
        destination = self._label("destination", destination)
        self._requests.labels(outcome, destination).inc()
        if tokens_in > 0:
            self._tokens.labels("in", destination).inc(tokens_in)
        if tokens_out > 0:
            self._tokens.labels("out", destination).inc(tokens_out)
        if ttft_s is not None and ttft_s >= 0:
            self._ttft.labels(destination).observe(ttft_s)
        if per_token_s is not None and per_token_s >= 0:
            self._token_latency.labels(destination).observe(per_token_s)
        if duration_s is not None and duration_s >= 0:
            self._duration.labels(destination).observe(duration_s)

    def engine_restarted(self) -> None:
        self._restarts.inc()

    def engine_regrouped(self, requests: int) -> None:
        if requests > 0:
            self._regrouped.inc(requests)

    def engine_prefill(self, chunks: int, prefilling: int) -> None:
        """Chunks read since the last sample, and requests being prefilled now."""
        if chunks > 0:
            self._prefill_chunks.inc(chunks)
        self._prefilling.set(prefilling)

    def engine_prefix(
        self,
        *,
        hits: int,
        misses: int,
        reused_tokens: int,
        read_tokens: int,
        evictions: int,
        cached_lanes: int,
        cached_bytes: int,
        lane_kv_bytes: int = 0,
    ) -> None:
        """Prefix reuse since the last sample (counts) and now (the cache's size)."""
        for result, count in (("hit", hits), ("miss", misses)):
            if count > 0:
                self._prefix.labels(result).inc(count)
        for counter, count in (
            (self._prefix_reused, reused_tokens),
            (self._prompt_read, read_tokens),
            (self._prefix_evictions, evictions),
        ):
            if count > 0:
                counter.inc(count)
        self._cached_lanes.set(cached_lanes)
        self._cached_bytes.set(cached_bytes)
        self._lane_kv.set(lane_kv_bytes)

    def escalated(self, reason: str) -> None:
        """A request went to the cloud; ``reason`` like ``pressure``, ``queue_full``."""
        self._escalations.labels(self._label("reason", reason)).inc()

    def set_budget(self, used_tokens: int, used_usd: float) -> None:
        self._budget_tokens.set(used_tokens)
        self._budget_usd.set(used_usd)

    def set_connectivity(self, state: str, reason: str = "") -> None:
        """``online``, ``degraded``, ``offline``...: 1 for it, 0 for every state seen before;
        the same for ``reason`` (``ok``, ``account_exhausted``, ``rate_limited``...)."""
        state = self._label("connectivity", state)
        with self._lock:
            self._connectivity_states.add(state)
            states = sorted(self._connectivity_states)
        for known in states:
            self._connectivity.labels(known).set(1 if known == state else 0)
        if not reason:
            return
        reason = self._label("connectivity_reason", reason)
        with self._lock:
            self._connectivity_reasons.add(reason)
            reasons = sorted(self._connectivity_reasons)
        for known in reasons:
            self._connectivity_reason.labels(known).set(1 if known == reason else 0)

    def set_model(self, model: str, version: str, provider: str) -> None:
        self._model.clear()
        self._model.labels(self._info(model), self._info(version), self._info(provider)).set(1)

    # -- state ------------------------------------------------------------------------------

    def observe_pressure(self, snapshot: PressureSnapshot) -> None:
        """Use as a monitor listener; the snapshot is rendered at scrape time."""
        self._collector.snapshot = snapshot

    def observe_admission(self, stats: AdmissionStats) -> None:
        self._collector.admission = stats

    def render(self) -> bytes:
        """The text exposition format, as the endpoint serves it."""
        return generate_latest(self.registry)
