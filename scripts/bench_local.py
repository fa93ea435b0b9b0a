"""Local-inference benchmark: the daemon against the raw og.Engine, side by side in one run.

    python scripts/bench_local.py [--model DIR ...] [--tokens 64] [--write docs/BENCHMARKS.md]

For each model it measures, in this process tree:
  * raw in-process og.Engine aggregate decode tokens/s for 1 and 16 requests;
  * the daemon (a real `edge-agent serve` subprocess, gRPC over loopback) for 1 and 16
    concurrent streams, and the ratio daemon ÷ raw (target ≥ 0.95);
  * the aggregate gain of 16 streams over 1, raw and daemon;
  * time to first token: idle raw vs idle daemon (added p50, target ≤ 3 ms) and short requests
    arriving while long generations run (p95 ÷ idle, target ≤ 3);
  * health-check p99 while the engine is saturated (target < 20 ms);
  * daemon RSS (the model lives in the worker), worker RSS;
  * single-stream decode as a fraction of the memory-bandwidth limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from bench_report import replace_section
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc
from edge_agent.engine._cpus import resolve_intra_op_threads

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [f"Tell me something about topic number {i} and why it matters." for i in range(16)]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- raw engine ------------------------------------------------------------------------------


class RawEngine:
    def __init__(
        self, model_dir: Path, threads: int = 0, max_batch: int = 16, spinning: bool = True
    ) -> None:
        import onnxruntime_genai as og

        from edge_agent.engine._providers import session_overlay

        self.og = og
        config = og.Config(str(model_dir))
        config.clear_providers()
        # 0 resolves as the daemon's worker resolves it, so both sides use the same threads.
        resolved = resolve_intra_op_threads(threads)
        config.overlay(json.dumps(session_overlay(resolved, max_batch, spinning)))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.engine = og.Engine(self.model)
        self.buffer = self.engine.create_event_buffer(256)

    def tokens(self, prompt: str) -> np.ndarray[Any, np.dtype[np.int32]]:
        text = self.tokenizer.apply_chat_template(
            json.dumps([{"role": "user", "content": prompt}]), add_generation_prompt=True
        )
        return np.asarray(self.tokenizer.encode(text), dtype=np.int32)

    def run(self, prompts: list[str], max_tokens: int) -> tuple[float, int, float]:
        """Aggregate tokens/s, tokens, and time to the first token (s)."""
        og = self.og
        requests, streams = [], {}
        start = time.perf_counter()
        for p in prompts:
            r = self.engine.create_request()
            o = og.TurnOptions(r)
            o.set_max_generated_tokens(max_tokens)
            o.set_min_generated_tokens(max_tokens)
            o.set_temperature(0.0)
            r.begin_turn(self.tokens(p), o)
            requests.append(r)
            streams[id(r)] = self.tokenizer.create_stream()
        n, first = 0, 0.0
        while self.engine.has_pending_requests():
            for ev in self.engine.run(self.buffer):
                if ev.flags.value & 1:
                    streams[id(ev.request)].decode(ev.token)
                    n += 1
                    if not first:
                        first = time.perf_counter() - start
        elapsed = time.perf_counter() - start
        for r in requests:
            r.close()
        return n / elapsed, n, first


# -- daemon ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(
        self,
        model_dir: Path,
        tmp: Path,
        lanes: int,
        threads: int,
        spinning: bool = True,
        regroup_max_tokens: int = 16,
        extra_toml: str = "",
    ) -> None:
        self.port = _free_port()
        config = tmp / "agent.toml"
        config.write_text(
            f'[paths]\nstate_dir = "{tmp}/state"\nruntime_dir = "{tmp}/run"\n'
            f'[server]\nlisten = ["127.0.0.1:{self.port}"]\n'
            f'[engine]\nmodel_dir = "{model_dir}"\nlanes = {lanes}\nintra_op_threads = {threads}\n'
            f"thread_spinning = {str(spinning).lower()}\n"
            f"regroup_max_tokens = {regroup_max_tokens}\n"
            '[logging]\nlevel = "WARNING"\n[metrics]\nport = 0\n[discovery]\nenabled = false\n'
            # Measures the serving path, not the per-client limiter (its default would
            # throttle the back-to-back TTFT probes).
            "[auth]\nallow_anonymous_loopback = true\n"
            "[auth.rate_limits.client]\nrequests_per_s = 0\n" + extra_toml
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "serve", "--config", str(config)]
        )
        self.target = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.2)

    def rss(self) -> tuple[int, int]:
        me = psutil.Process(self.proc.pid)
        workers = me.children()
        return me.memory_info().rss, sum(w.memory_info().rss for w in workers)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


async def _stream(stub: Any, prompt: str, max_tokens: int) -> tuple[int, float]:
    # min_tokens = max_tokens: both sides generate exactly the same number of tokens.
    request = pb.ChatRequest(
        messages=[pb.ChatMessage(role="user", content=prompt)],
        max_tokens=max_tokens,
        min_tokens=max_tokens,
    )
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    async for r in stub.Chat(request, timeout=600):
        # The first message carries the first token (its text may be empty, e.g. a space
        # merged into the next piece).
        if not first:
            first = time.perf_counter() - start
        if r.finish_reason:
            tokens = r.usage.completion_tokens
    return tokens, first


async def _daemon_run(target: str, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.InferenceStub(ch)
        await _stream(stub, "warm up", 2)
        start = time.perf_counter()
        results = await asyncio.gather(*(_stream(stub, p, max_tokens) for p in prompts))
        elapsed = time.perf_counter() - start
    n = sum(t for t, _ in results)
    return n / elapsed, n


async def _ttft_under_load(target: str, count: int, long_tokens: int) -> list[float]:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.InferenceStub(ch)
        longs = [
            asyncio.create_task(_stream(stub, "Write a long report.", long_tokens))
            for _ in range(2)
        ]
        await asyncio.sleep(0.5)
        ttfts = []
        for i in range(count):
            ttfts.append((await _stream(stub, PROMPTS[i % 16], 4))[1])
            if all(t.done() for t in longs):
                break
        await asyncio.gather(*longs)
    return ttfts


def _health_p99_while_saturated(target: str, max_tokens: int) -> float:
    stop = threading.Event()
    latencies: list[float] = []

    def prober() -> None:
        with grpc.insecure_channel(target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while not stop.is_set():
                t = time.perf_counter()
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                latencies.append(time.perf_counter() - t)
                time.sleep(0.01)

    thread = threading.Thread(target=prober)
    thread.start()
    asyncio.run(_daemon_run(target, PROMPTS, max_tokens))
    stop.set()
    thread.join()
    return _pct(latencies, 99) * 1000


def _memory_bandwidth() -> float:
    """Bytes/s of a large array copy (read + write), best of a few."""
    a = np.ones(256 * 1024 * 1024 // 8)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t))
    return best


# -- report ----------------------------------------------------------------------------------


_BARE_SERVER = """
import asyncio, grpc
from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc
from edge_agent.engine._cpus import resolve_intra_op_threads

class Bare(pb_grpc.InferenceServicer):
    async def Chat(self, request, context):
        yield pb.ChatResponse(delta="x")
        yield pb.ChatResponse(finish_reason=pb.FINISH_REASON_LENGTH)

async def main():
    server = grpc.aio.server()
    pb_grpc.add_InferenceServicer_to_server(Bare(), server)
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""


def _first_message_s(stub: Any, prompt: str) -> float:
    request = pb.ChatRequest(
        messages=[pb.ChatMessage(role="user", content=prompt)], max_tokens=1, min_tokens=1
    )
    start = time.perf_counter()
    replies = stub.Chat(request, timeout=60)
    next(replies)
    elapsed = time.perf_counter() - start
    for _ in replies:
        pass
    return elapsed


def _ttft_interleaved(raw: RawEngine, target: str, count: int) -> dict[str, float]:
    """Idle time to first token, alternating request by request between the raw engine, the
    daemon and a bare gRPC servicer that answers at once (the floor of gRPC and the Python
    client on this box), so drift in the box's speed hits all three alike."""
    raw_t: list[float] = []
    daemon_t: list[float] = []
    bare_t: list[float] = []
    bare = subprocess.Popen(
        [sys.executable, "-c", _BARE_SERVER], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert bare.stdout is not None
        port = int(bare.stdout.readline())
        with grpc.insecure_channel(target) as ch, grpc.insecure_channel(f"127.0.0.1:{port}") as bc:
            stub, bare_stub = pb_grpc.InferenceStub(ch), pb_grpc.InferenceStub(bc)
            _first_message_s(bare_stub, "warm up")
            for i in range(count):
                prompt = PROMPTS[i % 16]
                raw_t.append(raw.run([prompt], 1)[2])
                time.sleep(0.02)  # let the raw engine's thread pool stop spinning
                daemon_t.append(_first_message_s(stub, prompt))
                time.sleep(0.02)
                bare_t.append(_first_message_s(bare_stub, prompt))
                time.sleep(0.02)
    finally:
        bare.kill()
        bare.wait()
    return {
        "raw_ttft_ms": statistics.median(raw_t) * 1000,
        "daemon_ttft_ms": statistics.median(daemon_t) * 1000,
        "bare_grpc_ms": statistics.median(bare_t) * 1000,
    }


def bench_model(
    model_dir: Path, tokens: int, lanes: int, rounds: int, spinning: bool = True
) -> dict[str, Any]:
    res: dict[str, Any] = {"model": model_dir.name, "rounds": rounds, "spinning": spinning}
    weights = sum(f.stat().st_size for f in model_dir.glob("model.onnx*"))
    res["weights_mb"] = weights / 1e6
    res["default_threads"] = resolve_intra_op_threads(0)
    # Session options that move decode speed (raw engine, same prompts).
    for threads in (1, 2):
        eng = RawEngine(model_dir, threads=threads)
        eng.run(PROMPTS[:1], 4)
        res[f"raw_1_threads{threads}"], _, _ = eng.run(PROMPTS[:1], tokens)
        del eng
    eng = RawEngine(model_dir, max_batch=4)
    res["raw_16_batch4"], _, _ = eng.run(PROMPTS, tokens)
    del eng
    res.update(_spinning_side_by_side(model_dir, tokens, rounds))
    raw = RawEngine(model_dir, spinning=spinning)
    raw.run(PROMPTS[:1], 4)  # warm up
    res["raw_rss_mb"] = psutil.Process().memory_info().rss / 1e6
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp2:
        daemon = Daemon(model_dir, Path(tmp), lanes, 0, spinning)
        # The same daemon without regrouping, for its 16-stream figure beside the others.
        plain = Daemon(model_dir, Path(tmp2), lanes, 0, spinning, regroup_max_tokens=0)
        try:
            # Raw and daemon alternate, so a busy moment on a shared box hits both sides of
            # a round's ratio; the figures are medians over the rounds.
            runs: dict[str, list[float]] = {
                k: [] for k in ("raw_1", "daemon_1", "raw_16", "daemon_16", "plain_16")
            }
            for _ in range(rounds):
                for n in (1, 16):
                    runs[f"raw_{n}"].append(raw.run(PROMPTS[:n], tokens)[0])
                    time.sleep(0.05)
                    runs[f"daemon_{n}"].append(
                        asyncio.run(_daemon_run(daemon.target, PROMPTS[:n], tokens))[0]
                    )
                time.sleep(0.05)
                runs["plain_16"].append(asyncio.run(_daemon_run(plain.target, PROMPTS, tokens))[0])
            plain.stop()
            for key, values in runs.items():
                res[key] = statistics.median(values)
            res["plain_ratio_16"] = statistics.median(
                [p / r for p, r in zip(runs["plain_16"], runs["raw_16"], strict=True)]
            )
            for n in (1, 16):
                ratios = [d / r for d, r in zip(runs[f"daemon_{n}"], runs[f"raw_{n}"], strict=True)]
                res[f"ratio_{n}"] = statistics.median(ratios)
                res[f"ratio_{n}_range"] = (min(ratios), max(ratios))
            res.update(_ttft_interleaved(raw, daemon.target, count=60))
            del raw
            loaded = asyncio.run(_ttft_under_load(daemon.target, 20, tokens * 4))
            res["loaded_ttft_p95_ms"] = _pct(loaded, 95) * 1000
            res["health_p99_ms"] = _health_p99_while_saturated(daemon.target, tokens)
            rss, worker = daemon.rss()
            res["daemon_rss_mb"], res["worker_rss_mb"] = rss / 1e6, worker / 1e6
        finally:
            daemon.stop()
            if plain.proc.poll() is None:
                plain.stop()
    res["bandwidth_gbs"] = _memory_bandwidth() / 1e9
    res["bw_fraction"] = res["daemon_1"] * weights / (res["bandwidth_gbs"] * 1e9)
    return res


def _spinning_side_by_side(model_dir: Path, tokens: int, rounds: int) -> dict[str, float]:
    """Raw engine with onnxruntime's thread spinning on and off, alternating round by round."""
    on, off = RawEngine(model_dir, spinning=True), RawEngine(model_dir, spinning=False)
    ratios: dict[int, list[float]] = {1: [], 16: []}
    for eng in (on, off):
        eng.run(PROMPTS[:1], 4)
    for _ in range(rounds):
        for n in (1, 16):
            a = on.run(PROMPTS[:n], tokens)[0]
            time.sleep(0.05)
            b = off.run(PROMPTS[:n], tokens)[0]
            time.sleep(0.05)
            ratios[n].append(a / b)
    return {f"spin_ratio_{n}": statistics.median(v) for n, v in ratios.items()}


def render(results: list[dict[str, Any]], tokens: int, lanes: int) -> str:
    lines = [
        "## Local inference (scripts/bench_local.py)",
        "",
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; greedy, "
        f"{tokens} new tokens per stream; daemon `engine.lanes = {lanes}`, batch ≤ 16; "
        "daemon = `edge-agent serve` subprocess over gRPC on loopback.",
        "",
        "| measure | target | " + " | ".join(r["model"] for r in results) + " |",
        "|---|---|" + "---|" * len(results),
    ]

    def row(name: str, target: str, fmt: str, key: Any) -> None:
        cells = [fmt.format(key(r)) for r in results]
        lines.append(f"| {name} | {target} | " + " | ".join(cells) + " |")

    row("weights (MB)", "", "{:.1f}", lambda r: r["weights_mb"])
    row("raw og.Engine, 1 stream (tok/s)", "", "{:.1f}", lambda r: r["raw_1"])
    row("daemon, 1 stream (tok/s)", "", "{:.1f}", lambda r: r["daemon_1"])
    row("**daemon ÷ raw, 1 stream**", "≥ 0.95", "{:.2f}", lambda r: r["ratio_1"])
    row("… range over the rounds", "", "{}", lambda r: "{:.2f}–{:.2f}".format(*r["ratio_1_range"]))
    row("raw og.Engine, 16 requests (tok/s)", "", "{:.1f}", lambda r: r["raw_16"])
    row("daemon, 16 streams (tok/s)", "", "{:.1f}", lambda r: r["daemon_16"])
    row("**daemon ÷ raw, 16 streams**", "≥ 0.95", "{:.2f}", lambda r: r["ratio_16"])
    row("… range over the rounds", "", "{}", lambda r: "{:.2f}–{:.2f}".format(*r["ratio_16_range"]))
    row("raw gain 16 ÷ 1", "≈ 1.8", "{:.2f}", lambda r: r["raw_16"] / r["raw_1"])
    row("**daemon gain 16 ÷ 1**", "keep raw's", "{:.2f}", lambda r: r["daemon_16"] / r["daemon_1"])
    row(
        "daemon ÷ raw, 16 streams, regrouping off",
        "",
        "{:.2f}",
        lambda r: r["plain_ratio_16"],
    )
    row("raw idle TTFT p50 (ms)", "", "{:.2f}", lambda r: r["raw_ttft_ms"])
    row("daemon idle TTFT p50 (ms)", "", "{:.2f}", lambda r: r["daemon_ttft_ms"])
    row(
        "**added TTFT p50 (ms)**", "≤ 3", "{:.2f}", lambda r: r["daemon_ttft_ms"] - r["raw_ttft_ms"]
    )
    row("… of which bare gRPC + Python client (ms)", "", "{:.2f}", lambda r: r["bare_grpc_ms"])
    row(
        "short-request TTFT p95 beside long generations (ms)",
        "",
        "{:.2f}",
        lambda r: r["loaded_ttft_p95_ms"],
    )
    row(
        "**… ÷ idle TTFT**",
        "≤ 3",
        "{:.2f}",
        lambda r: r["loaded_ttft_p95_ms"] / r["daemon_ttft_ms"],
    )
    row("**health p99 while saturated (ms)**", "< 20", "{:.2f}", lambda r: r["health_p99_ms"])
    row("daemon RSS, model excluded (MB)", "", "{:.0f}", lambda r: r["daemon_rss_mb"])
    row("engine worker RSS (MB)", "", "{:.0f}", lambda r: r["worker_rss_mb"])
    row("memory bandwidth (GB/s, numpy copy)", "", "{:.1f}", lambda r: r["bandwidth_gbs"])
    row("1-stream decode ÷ bandwidth limit", "", "{:.2f}", lambda r: r["bw_fraction"])
    row("intra-op threads by default on this box", "", "{:d}", lambda r: r["default_threads"])
    row("raw 1 stream, intra_op_threads=1 (tok/s)", "", "{:.1f}", lambda r: r["raw_1_threads1"])
    row("raw 1 stream, intra_op_threads=2 (tok/s)", "", "{:.1f}", lambda r: r["raw_1_threads2"])
    row("raw 16 requests, max_batch_size=4 (tok/s)", "", "{:.1f}", lambda r: r["raw_16_batch4"])
    row("raw 1 stream, thread spinning on ÷ off", "", "{:.2f}", lambda r: r["spin_ratio_1"])
    row("raw 16 requests, thread spinning on ÷ off", "", "{:.2f}", lambda r: r["spin_ratio_16"])
    lines += [
        "",
        "How to read it. Raw and daemon alternate within one run (rounds for throughput; "
        "request by request for time to first token), so a busy moment on this shared 2-core VM "
        "hits both sides; ratios are medians of the per-round ratios, with their range (wide "
        "here: the VM's neighbours come and go). Both sides use the same session options "
        "(threads, spinning, batch size). The ≥ 0.95 targets are judged on the bench model, "
        "whose per-token cost is realistic next to the daemon's; the demo model decodes a token "
        "in well under a millisecond, less than the daemon's own fixed cost per token (~0.1-0.3 "
        "ms of CPU: the gRPC write, the message from the worker, the stream generators), which "
        "competes with the engine for the two cores; that cost is per token, not proportional "
        "to the model, and vanishes beside Mistral Small 3's hundreds of ms per token on CPU. "
        "16 streams: the requests reach the worker one by one, so the first steps alone and the "
        "rest gather in a fresh lane; regrouping moves the first into that batch (ARCHITECTURE.md "
        "'Regrouping'), and the row 'regrouping off' is the same daemon without it, measured in "
        "the same rounds. What stays between the daemon and the raw Engine at 16 streams on this "
        "rig is CPU: the gRPC server and the client (their own processes) need about 0.06 and "
        "0.05 of a core beside an engine that uses both cores, about 5 % of the box, and the "
        "burst's first request has one prefill step alone; a box whose engine leaves a core "
        "free, or whose tokens cost more, does not pay it. Added time to first token is what "
        "the daemon adds to the engine's own: "
        "most of it is the round trip of gRPC and the Python client, measured beside it on a "
        "bare servicer that answers at once; the rest is the request path (decision, "
        "admission, submit) and the hand-off to and from the worker. Read it on the demo model; "
        "on the bench model it is the difference of two larger medians and moves by a few ms "
        "with the box. Thread spinning (onnxruntime's default, `engine.thread_spinning`) is "
        "compared on the raw engine, on and off alternating; intra-op thread counts for a single "
        "stream have swapped places between runs on this VM: measure on the target box before "
        "setting `engine.intra_op_threads`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", type=Path, help="model folder (repeatable)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--lanes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="alternating raw/daemon rounds")
    parser.add_argument(
        "--no-spinning",
        dest="spinning",
        action="store_false",
        help="both sides with engine.thread_spinning = false",
    )
    parser.add_argument("--write", type=Path, default=None, help="update this BENCHMARKS.md")
    args = parser.parse_args()
    models = args.model or [
        m for m in (ROOT / "models/demo", ROOT / ".cache/bench-model") if m.exists()
    ]
    results = []
    for m in models:
        results.append(bench_model(m, args.tokens, args.lanes, args.rounds, args.spinning))
        print(json.dumps(results[-1]), flush=True)
    section = render(results, args.tokens, args.lanes)
    print(section)
    if args.write:
        replace_section(section, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
