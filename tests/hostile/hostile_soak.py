"""Soak: 64 concurrent clients for a bounded time mixing chats, status calls, cancellations and
deadlines, with signed bundle activations pushed over the admin socket (one in the warm-up,
one in the middle). The clients run in a process of their own (soak_load.py) and another
process probes health ten times a second, as a monitoring system would, so the daemon's
process only serves and its RSS is its own.

Expected outcomes: OK; RESOURCE_EXHAUSTED (shedding under load); CANCELLED and
DEADLINE_EXCEEDED only where the client itself cancelled or set a short deadline.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from bundle_fixtures import Fleet, make_folder
from daemon_harness import DEMO_MODEL, RunningAgent
from hostile_common import MIB, NEVER, Tally, engine_idle, rss_bytes

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc

C = grpc.StatusCode
CLIENTS = 64
_PROMPTS = ["def", "What does json.dumps do?", "The", "Tell a story", "class"]

_PROBER = """
import json, sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))
out = []
for line in iter(sys.stdin.readline, ""):
    if line.strip() == "stop":
        break
    t0 = time.perf_counter()
    try:
        ok = stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
    except grpc.RpcError:
        ok = False
    out.append(((time.perf_counter() - t0) * 1000, ok))
print(json.dumps(out), flush=True)
"""


class _Prober:
    """Health checks from another process, paced by us (10 per second)."""

    def __init__(self, target: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROBER, target],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pace, name="health-pacer", daemon=True)
        self._thread.start()

    sent = 0

    def _pace(self) -> None:
        assert self.proc.stdin is not None
        while not self._stop.wait(0.1):
            self.proc.stdin.write("check\n")
            self.proc.stdin.flush()
            self.sent += 1

    def results(self) -> list[tuple[float, bool]]:
        self._stop.set()
        self._thread.join(timeout=5)
        out, _ = self.proc.communicate("stop\n", timeout=60)
        return [(float(ms), bool(ok)) for ms, ok in json.loads(out)]


class _Bundles:
    """Signed bundles of the demo model, trusted by the box, pushed over the admin socket.

    Built and signed before the soak starts: hashing and signing in this process (the
    daemon's, in these tests) would stall the daemon's loop and be measured as its latency.
    """

    def __init__(self, running: RunningAgent, tmp: Path, count: int) -> None:
        self.running = running
        fleet = Fleet(tmp / "fleet")
        fleet.trust(running.agent.bundles.trust.path, "soak-ops")
        self.archives = [
            fleet.archive(
                fleet.sign(
                    make_folder(tmp / "src", r, name="soak-demo", model_src=DEMO_MODEL), "soak-ops"
                )
            )
            for r in range(1, count + 1)
        ]
        self.release = 0

    def push(self, tally: Tally) -> None:
        # From a process of its own, as an operator's machine would: a client in the
        # daemon's process would count its own buffers and threads as the daemon's RSS.
        self.release += 1
        archive = self.archives[self.release - 1]
        socket = self.running.agent.config.tls.admin_socket
        argv = [sys.executable, "-m", "edge_agent.cli", "bundle", "push", "--quiet"]
        argv += ["--insecure", "--timeout", "300", "--target", f"unix:{socket}", str(archive)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        model = self.running.agent.engine.model
        if proc.returncode != 0 or model.version != f"1.{self.release}.0":
            outcome = (proc.stdout + proc.stderr).strip()[-300:]
            tally.fail("wrong_status", f"bundle r{self.release}: {outcome}, {model}")
        tally.figures.setdefault("bundles_activated", []).append(model.version)


async def _client(
    target: str, rng: random.Random, stop_at: float, tally: Tally, counts: dict[str, int]
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        while time.monotonic() < stop_at:
            kind = rng.choices(["chat", "status", "cancel", "deadline"], [60, 15, 15, 10])[0]
            counts[kind] = counts.get(kind, 0) + 1
            tally.cases += 1
            request = pb.ChatRequest(
                messages=[pb.ChatMessage(role="user", content=rng.choice(_PROMPTS))],
                max_tokens=rng.randint(1, 64),
            )
            allowed = {C.OK, C.RESOURCE_EXHAUSTED}
            try:
                if kind == "status":
                    await stub.GetStatus(pb.GetStatusRequest(), timeout=120)
                    await stub.ListModels(pb.ListModelsRequest(), timeout=120)
                elif kind == "chat":
                    final = [r async for r in stub.Chat(request, timeout=120)][-1]
                    if final.usage.completion_tokens <= 0 or not final.finish_reason:
                        tally.fail("wrong_status", "a chat ended without a final answer")
                elif kind == "cancel":
                    allowed.add(C.CANCELLED)
                    call = stub.Chat(request, timeout=120)
                    async for _ in call:
                        call.cancel()
                        break
                else:
                    allowed.add(C.DEADLINE_EXCEEDED)
                    async for _ in stub.Chat(request, timeout=rng.uniform(0.01, 0.5)):
                        pass
                code = C.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            codes: dict[str, int] = tally.figures.setdefault("codes", {})
            codes[code.name] = codes.get(code.name, 0) + 1
            if code == C.DEADLINE_EXCEEDED and kind != "deadline":
                tally.fail("hung", f"{kind}: no answer in 120 s")
            elif code in NEVER or code not in allowed:
                tally.fail("wrong_status", f"{kind}: {code.name}")


def load_clients(target: str, seconds: float, tally: Tally, seed: int) -> dict[str, int]:
    counts: dict[str, int] = {}

    async def main() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(
                _client(target, random.Random(seed * 1000 + i), stop_at, tally, counts)
                for i in range(CLIENTS)
            )
        )

    asyncio.run(main())
    return counts


def _merge(tally: Tally, load: dict[str, Any]) -> None:
    for key in ("cases", "crashes", "wrong_status", "leaks", "hung", "lost"):
        setattr(tally, key, getattr(tally, key) + int(load[key]))
    tally.notes.extend(load["notes"][: max(0, 20 - len(tally.notes))])
    tally.figures.update(load["figures"])


def run_soak(running: RunningAgent, tmp: Path, tally: Tally, seconds: float, seed: int = 3) -> None:
    """Warm up (10 s, or a quarter of a long run, with a first activation), then soak."""
    warm_s = max(min(10.0, seconds), seconds / 4)
    bundles = _Bundles(running, tmp, 3)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((time.monotonic() - t0, rss_bytes(collect=False)))

    def load_body() -> None:
        script = Path(__file__).with_name("soak_load.py")
        argv = [sys.executable, str(script), running.target, str(warm_s + seconds), str(seed)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tally.fail("crashes", f"the load process failed: {proc.stderr[-500:]}")
            return
        _merge(tally, json.loads(proc.stdout.strip().splitlines()[-1]))

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    load = threading.Thread(target=load_body, name="soak-load")
    prober = _Prober(running.target)
    time.sleep(3.0)  # health of the idle daemon first, for the side-by-side figure
    idle_checks = prober.sent
    t0 = time.monotonic()
    sampler.start()
    load.start()
    # Two activations belong to the warm-up: the first ones cost the daemon a few MiB each
    # (imports, its capped malloc arenas filling; RELIABILITY.md), later ones next to none.
    time.sleep(max(0.0, t0 + warm_s / 3 - time.monotonic()))
    bundles.push(tally)
    time.sleep(max(0.0, t0 + 2 * warm_s / 3 - time.monotonic()))
    bundles.push(tally)
    time.sleep(max(0.0, t0 + warm_s + seconds / 2 - time.monotonic()))
    bundles.push(tally)  # the one in the middle of the measured run
    load.join(timeout=warm_s + seconds + 300)
    stop.set()
    sampler.join(timeout=5)
    health = prober.results()
    if load.is_alive():
        tally.fail("hung", "the soak clients did not finish")
    busy: Any = engine_idle(running, timeout_s=30)
    if busy is not None:
        tally.fail("hung", f"the engine still holds requests after the soak: {busy}")
    _judge_memory(tally, samples, warm_s)
    _judge_health(tally, health[idle_checks:], health[:idle_checks])


def _judge_memory(tally: Tally, samples: list[tuple[float, int]], warm_s: float) -> None:
    warm = [rss for t, rss in samples if warm_s <= t < warm_s + 5]
    last = [rss for t, rss in samples[-10:]]
    if not warm or not last:
        tally.fail("leaks", "too few RSS samples to judge")
        return
    base, end = statistics.median(warm), statistics.median(last)
    growth = (end - base) / base
    tally.figures["rss_mib"] = (round(base / MIB, 1), round(end / MIB, 1))
    tally.figures["rss_growth_pct"] = round(growth * 100, 2)
    if growth >= 0.05:
        tally.fail("leaks", f"daemon RSS grew {growth:.1%} after the warm-up")


def _p(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)


def _judge_health(
    tally: Tally, health: list[tuple[float, bool]], idle: list[tuple[float, bool]]
) -> None:
    failed = sum(1 for _, ok in health if not ok)
    if failed:
        tally.fail("wrong_status", f"{failed} of {len(health)} health checks not SERVING")
    times = [ms for ms, _ in health]
    if times:
        tally.figures["health_checks"] = len(times)
        tally.figures["health_p50_ms"] = _p(times, 0.5)
        tally.figures["health_p99_ms"] = _p(times, 0.99)
    idle_times = [ms for ms, _ in idle]
    if idle_times:
        tally.figures["health_idle_p99_ms"] = _p(idle_times, 0.99)
