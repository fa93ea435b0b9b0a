"""Scrape-time families built from the latest pressure snapshot and admission counters.

The monitor already holds every value in an immutable snapshot, so instead of mirroring each
one into a Gauge on every sample the collector renders the snapshot when Prometheus asks.
A reading the box does not have produces no sample at all (absent, not zero).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent.pressure import SIGNALS, AdmissionStats, PressureSnapshot, PsiResource

__all__ = ["SnapshotCollector"]

_P = "edge_agent_"


class SnapshotCollector(Collector):
    """Holds references to the latest snapshot/stats; a reference swap is atomic."""

    def __init__(self) -> None:
        self.snapshot: PressureSnapshot | None = None
        self.admission: AdmissionStats | None = None

    def describe(self) -> list[Metric]:
        # Families depend on what the box has; let the registry skip duplicate checks.
        return []

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        admission = self.admission
        if snapshot is not None:
            yield from _pressure_families(snapshot)
        yield from _queue_families(snapshot, admission)


def _pressure_families(s: PressureSnapshot) -> Iterator[Metric]:
    level = GaugeMetricFamily(
        _P + "pressure_level", "Pressure level: 0 ok, 1 elevated, 2 critical."
    )
    level.add_metric([], float(s.level))
    yield level
    signal_level = GaugeMetricFamily(
        _P + "pressure_signal_level",
        "Level each signal holds (0 ok, 1 elevated, 2 critical).",
        labels=["signal"],
    )
    held = dict(s.signal_levels)
    for signal in SIGNALS:
        signal_level.add_metric([signal.name], float(held.get(signal.name, 0)))
    yield signal_level
    sampled = GaugeMetricFamily(
        _P + "pressure_sample_timestamp_seconds", "Unix time of the latest pressure sample."
    )
    sampled.add_metric([], s.wall_time)
    yield sampled

    yield from _psi_families(s)

    if s.memory is not None:
        m = s.memory
        for name, value, doc in (
            ("memory_total_bytes", m.total_bytes, "MemTotal."),
            ("memory_available_bytes", m.available_bytes, "MemAvailable (cgroup-limited)."),
            ("swap_total_bytes", m.swap_total_bytes, "SwapTotal."),
            ("swap_used_bytes", m.swap_used_bytes, "SwapTotal - SwapFree."),
        ):
            yield _gauge(name, doc, float(value))
        if m.cgroup_limit_bytes is not None:
            yield _gauge(
                "memory_cgroup_limit_bytes",
                "Memory limit of the service's cgroup.",
                float(m.cgroup_limit_bytes),
            )
    if s.cpu_percent is not None:
        yield _gauge(
            "cpu_utilization_ratio", "Busy share of all cores since the last sample.",
            s.cpu_percent / 100.0,
        )  # fmt: skip
    if s.temperatures:
        temps = GaugeMetricFamily(
            _P + "temperature_celsius", "Sensor temperature.", labels=["sensor"]
        )
        for t in s.temperatures:
            temps.add_metric([t.sensor], t.celsius)
        yield temps
    if s.accelerators:
        free = GaugeMetricFamily(
            _P + "accelerator_memory_free_bytes",
            "Free accelerator memory.",
            labels=["device", "name"],
        )
        total = GaugeMetricFamily(
            _P + "accelerator_memory_total_bytes",
            "Accelerator memory.",
            labels=["device", "name"],
        )
        for a in s.accelerators:
            free.add_metric([str(a.index), a.name], float(a.free_bytes))
            total.add_metric([str(a.index), a.name], float(a.total_bytes))
        yield free
        yield total
    if s.engine is not None:
        e = s.engine
        yield _gauge("kv_cache_used_bytes", "KV cache the engine holds.", float(e.kv_bytes_in_use))
        if e.kv_bytes_capacity is not None:
            yield _gauge(
                "kv_cache_capacity_bytes", "KV cache the engine can hold.",
                float(e.kv_bytes_capacity),
            )  # fmt: skip
        if e.per_token_latency_s is not None:
            yield _gauge(
                "engine_token_latency_seconds",
                "Recent per-token decode latency the engine observed.",
                e.per_token_latency_s,
            )


def _psi_families(s: PressureSnapshot) -> Iterator[Metric]:
    resources: list[tuple[str, PsiResource]] = [
        (name, res)
        for name, res in (("cpu", s.psi.cpu), ("memory", s.psi.memory), ("io", s.psi.io))
        if res is not None
    ]
    if not resources:
        return
    labels = ["resource", "kind"]
    avg = {
        window: GaugeMetricFamily(
            f"{_P}psi_{window}_ratio",
            f"PSI share of time stalled, {window} window average.",
            labels=labels,
        )
        for window in ("avg10", "avg60", "avg300")
    }
    stall = CounterMetricFamily(
        _P + "psi_stall_seconds", "PSI cumulative stall time.", labels=labels
    )
    for name, res in resources:
        for kind, stats in (("some", res.some), ("full", res.full)):
            if stats is None:
                continue
            avg["avg10"].add_metric([name, kind], stats.avg10 / 100.0)
            avg["avg60"].add_metric([name, kind], stats.avg60 / 100.0)
            avg["avg300"].add_metric([name, kind], stats.avg300 / 100.0)
            stall.add_metric([name, kind], stats.total_us / 1e6)
    yield from avg.values()
    yield stall


def _queue_families(s: PressureSnapshot | None, a: AdmissionStats | None) -> Iterator[Metric]:
    engine = s.engine if s is not None else None
    if a is not None:
        queued, active = a.queued, a.active
    elif engine is not None:
        queued, active = engine.queued_requests, engine.active_requests
    else:
        return
    yield _gauge("queue_depth", "Requests waiting for local admission.", float(queued))
    yield _gauge("active_requests", "Requests running on the local engine.", float(active))
    if a is None:
        return
    yield _gauge("admission_held_bytes", "Memory reserved by admitted requests.", a.held_bytes)
    yield _gauge("admission_max_active", "Concurrency limit of the local engine.", a.max_active)
    admitted = CounterMetricFamily(_P + "admission_admitted", "Requests admitted locally.")
    admitted.add_metric([], float(a.admitted_total))
    yield admitted
    refused = CounterMetricFamily(
        _P + "admission_refusals", "Requests admission refused, by reason.", labels=["reason"]
    )
    for reason, count in sorted(a.refused_total.items()):
        refused.add_metric([reason], float(count))
    yield refused
    cancelled = CounterMetricFamily(
        _P + "admission_cancelled", "Waiters cancelled before admission."
    )
    cancelled.add_metric([], float(a.cancelled_total))
    yield cancelled


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(_P + name, doc)
    family.add_metric([], float(value))
    return family
