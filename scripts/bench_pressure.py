#!/usr/bin/env python3
"""Benchmark the pressure monitor and admission controller; record them in docs/BENCHMARKS.md.

Measures, on this machine:
  * one sample (PSI + meminfo + /proc/stat + cgroup + level tracking): p50/p99 wall µs;
  * the monitor at 1 Hz for --duration seconds: process CPU as % of one core, beside the
    same event loop ticking at 1 Hz without sampling (the floor);
  * admission per request, uncontended ``async with controller.admit()``: p50/p99 µs, beside
    an empty async context manager; and a contended hand-off (release → next waiter).

Usage: scripts/bench_pressure.py [--duration 30] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench_report import replace_section

from edge_agent.pressure import (
    AdmissionConfig,
    AdmissionController,
    EngineLoad,
    PressureConfig,
    PressureMonitor,
    Sampler,
)

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = "## Pressure"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def bench_sample(n: int = 3000) -> tuple[float, float]:
    sampler = Sampler(PressureConfig(), lambda: EngineLoad(1, 0, 0, None, None))
    sampler.open()
    for _ in range(50):  # warm caches and the first-sample path
        sampler.sample()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sampler.sample()
        times.append((time.perf_counter() - t0) * 1e6)
    sampler.close()
    return statistics.median(times), percentile(times, 0.99)


async def _cpu_over(seconds: float) -> float:
    """Process CPU time over ``seconds`` of wall time, as % of one core."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    return 100.0 * (time.process_time() - cpu0) / (time.monotonic() - wall0)


async def bench_monitor(duration: float) -> tuple[float, float, int]:
    async def ticker() -> None:
        while True:  # noqa: ASYNC110 (the point is to wake at 1 Hz like the monitor)
            await asyncio.sleep(1.0)

    task = asyncio.create_task(ticker())
    idle = await _cpu_over(duration)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    monitor = PressureMonitor(
        PressureConfig(interval_s=1.0), lambda: EngineLoad(1, 0, 0, None, None)
    )
    await monitor.start()
    busy = await _cpu_over(duration)
    snapshot = monitor.snapshot
    await monitor.stop()
    return idle, busy, snapshot.sequence if snapshot else 0


async def bench_admission(n: int = 20000) -> dict[str, tuple[float, float]]:
    controller = AdmissionController(AdmissionConfig(), max_active=16)

    @contextlib.asynccontextmanager
    async def empty() -> AsyncIterator[None]:
        yield None

    results: dict[str, tuple[float, float]] = {}
    for name, make in (
        ("empty async with", lambda: empty()),
        ("admit, uncontended", lambda: controller.admit(cost_bytes=1024, priority=1)),
    ):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            async with make():
                pass
            times.append((time.perf_counter() - t0) * 1e6)
        results[name] = (statistics.median(times), percentile(times, 0.99))

    # Contended: one slot, a waiter always queued; measure release → waiter running.
    contended = AdmissionController(AdmissionConfig(max_queue=4), max_active=1)
    handoffs: list[float] = []
    ticket = await contended.acquire(cost_bytes=1)
    for _ in range(n // 4):
        waiter = asyncio.create_task(contended.acquire(cost_bytes=1))
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        ticket.release()
        ticket = await waiter
        handoffs.append((time.perf_counter() - t0) * 1e6)
    ticket.release()
    results["hand-off to a waiter"] = (statistics.median(handoffs), percentile(handoffs, 0.99))
    return results


def render(
    sample: tuple[float, float],
    monitor: tuple[float, float, int],
    admission: dict[str, tuple[float, float]],
    duration: float,
) -> str:
    idle, busy, samples = monitor
    base = admission["empty async with"]
    lines = [
        SECTION,
        "",
        f"`scripts/bench_pressure.py --duration {duration:g}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"kernel {platform.release()}, {time.strftime('%Y-%m-%d')}. The box was shared with "
        "other CPU-heavy work, so percentiles include scheduler noise.",
        "",
        "| what | p50 | p99 |",
        "|---|---|---|",
        f"| one monitor sample (PSI ×3, meminfo, stat, cgroup, levels) | {sample[0]:.0f} µs "
        f"| {sample[1]:.0f} µs |",
    ]
    for name, (p50, p99) in admission.items():
        lines.append(f"| {name} | {p50:.1f} µs | {p99:.1f} µs |")
    lines += [
        "",
        "| monitor at 1 Hz | CPU of one core |",
        "|---|---|",
        f"| event loop ticking at 1 Hz, no sampling | {idle:.4f} % |",
        f"| pressure monitor sampling at 1 Hz ({samples} samples) | {busy:.4f} % |",
        "",
        f"Admission overhead beside an empty `async with`: "
        f"{admission['admit, uncontended'][0] / base[0]:.1f}× at p50 "
        f"({admission['admit, uncontended'][0] - base[0]:.1f} µs per request). "
        f"Monitor: {busy - idle:+.4f} percentage points of one core over the idle loop.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds at 1 Hz")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    sample = bench_sample()
    monitor = asyncio.run(bench_monitor(args.duration))
    admission = asyncio.run(bench_admission())
    text = render(sample, monitor, admission, args.duration)
    print(text)
    if not args.no_write:
        replace_section(text)
        print(f"written to {BENCHMARKS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
