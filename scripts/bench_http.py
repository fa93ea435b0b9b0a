"""What the OpenAI-compatible HTTP API costs beside gRPC, side by side on one daemon.

    python scripts/bench_http.py [--model .cache/bench-model] [--quick] [--write docs/BENCHMARKS.md]

One `edge-agent serve` subprocess (bench_local.Daemon) serves both APIs on loopback; every
figure alternates gRPC and HTTP within one run, so a busy moment on a shared box falls on
both sides of a ratio:

  * streaming throughput, HTTP ÷ gRPC aggregate tokens/s at 1 and 16 concurrent streams
    (target >= 0.95), median of the per-round ratios and their range;
  * added time to first token, HTTP over gRPC (target <= 2 ms p50), request by request;
  * non-streaming latency overhead: a whole short answer as one JSON body against the
    same answer consumed from a gRPC stream;
  * CPU per token at 16 streams, of the daemon process and of this client process, to
    tell a server's cost from a client's;
  * the official `openai` SDK (AsyncOpenAI) for one stream, to show a client library's own
    cost beside the lean httpx client.

gRPC is driven by the project's `edge_agent.client.AsyncClient`; HTTP by httpx (the
transport the `openai` SDK uses) reading SSE lines as a client does. Both generate exactly
the same number of tokens (min_tokens = max_tokens), counted from the reported usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from bench_local import PROMPTS, Daemon, _free_port
from bench_report import replace_section
from openai import AsyncOpenAI

from edge_agent.client import AsyncClient, ChatOptions

ROOT = Path(__file__).resolve().parent.parent
HEAD = "## HTTP API beside gRPC (scripts/bench_http.py)"
Measure = Callable[[list[str], int], Awaitable[tuple[float, int]]]


class Sides:
    """The two front ends of one daemon, with one client of each kind kept open."""

    def __init__(self, grpc_target: str, http_port: int) -> None:
        self.grpc = AsyncClient(grpc_target)
        base = f"http://127.0.0.1:{http_port}"
        # 16 streams need 16 HTTP/1.1 connections; keep them alive between rounds.
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        self.http = httpx.AsyncClient(base_url=base, timeout=600, limits=limits)
        self.sdk = AsyncOpenAI(base_url=base + "/v1", api_key="bench", max_retries=0)
        self.model = ""

    async def open(self) -> None:
        models = (await self.http.get("/v1/models")).json()["data"]
        self.model = next(m["id"] for m in models if m["edge_destination"] == "local")
        # The first 16-stream burst of each side pays one-off costs (lanes, connections).
        for one in (self.grpc_stream, self.http_stream, self.sdk_stream):
            await asyncio.gather(*(one(p, 4) for p in PROMPTS))

    async def close(self) -> None:
        await self.grpc.close()
        await self.http.aclose()
        await self.sdk.close()

    # -- one request each way: (completion tokens, seconds to the first token) -------------

    async def grpc_stream(self, prompt: str, tokens: int) -> tuple[int, float]:
        options = ChatOptions(max_tokens=tokens, min_tokens=tokens)
        start = time.perf_counter()
        first, count = 0.0, 0
        async for chunk in self.grpc.chat([("user", prompt)], options, timeout=600):
            if not first:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                count = chunk.usage.completion_tokens
        return count, first

    def _body(self, prompt: str, tokens: int, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "min_tokens": tokens,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def http_stream(self, prompt: str, tokens: int) -> tuple[int, float]:
        start = time.perf_counter()
        first, count = 0.0, 0
        body = self._body(prompt, tokens, True)
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue  # blank separators, keep-alive comments
                if not first:
                    first = time.perf_counter() - start
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    break
                usage = json.loads(data).get("usage")
                if usage:
                    count = usage["completion_tokens"]
        return count, first

    async def sdk_stream(self, prompt: str, tokens: int) -> tuple[int, float]:
        start = time.perf_counter()
        first, count = 0.0, 0
        stream = await self.sdk.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"min_tokens": tokens},
        )
        async for chunk in stream:
            if not first:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                count = chunk.usage.completion_tokens
        return count, first

    async def http_whole(self, prompt: str, tokens: int) -> tuple[int, float]:
        start = time.perf_counter()
        response = await self.http.post(
            "/v1/chat/completions", json=self._body(prompt, tokens, False)
        )
        response.raise_for_status()
        elapsed = time.perf_counter() - start
        return response.json()["usage"]["completion_tokens"], elapsed

    async def grpc_whole(self, prompt: str, tokens: int) -> tuple[int, float]:
        start = time.perf_counter()
        count, _ = await self.grpc_stream(prompt, tokens)
        return count, time.perf_counter() - start


async def _throughput(
    one: Callable[[str, int], Awaitable[tuple[int, float]]],
    n: int,
    tokens: int,
    cpu: dict[str, list[float]] | None = None,
    daemon: psutil.Process | None = None,
) -> float:
    """Aggregate tokens/s; with ``cpu``, also the CPU µs per token of this client process
    and of the daemon's own process (its engine worker is a child, not counted)."""

    def daemon_cpu() -> float:
        if daemon is None:
            return 0.0
        t = daemon.cpu_times()
        return float(t.user + t.system)

    client0, daemon0 = time.process_time(), daemon_cpu()
    start = time.perf_counter()
    results = await asyncio.gather(*(one(PROMPTS[i % 16], tokens) for i in range(n)))
    elapsed = time.perf_counter() - start
    got = sum(t for t, _ in results)
    if got != n * tokens:
        raise SystemExit(f"expected {n * tokens} tokens, got {got}")
    if cpu is not None:
        cpu.setdefault("client", []).append((time.process_time() - client0) / got * 1e6)
        cpu.setdefault("daemon", []).append((daemon_cpu() - daemon0) / got * 1e6)
    return got / elapsed


async def measure(
    sides: Sides, rounds: int, tokens: int, probes: int, daemon: psutil.Process
) -> dict[str, Any]:
    runs: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, list[float]]] = {"grpc": {}, "http": {}}
    for r in range(rounds):
        # Which side goes first turns each round: neither always meets a warmer box.
        for n in (1, 16):
            pair = [("grpc", sides.grpc_stream), ("http", sides.http_stream)]
            for name, one in pair if r % 2 == 0 else pair[::-1]:
                side_cpu = cpu[name] if n == 16 else None
                rate = await _throughput(one, n, tokens, side_cpu, daemon)
                runs.setdefault(f"{name}_{n}", []).append(rate)
                await asyncio.sleep(0.05)
        runs.setdefault("sdk_1", []).append(await _throughput(sides.sdk_stream, 1, tokens))
        runs.setdefault("grpc_1b", []).append(await _throughput(sides.grpc_stream, 1, tokens))
    res: dict[str, Any] = {k: statistics.median(v) for k, v in runs.items()}
    for name, parts in cpu.items():
        for part, samples in parts.items():
            res[f"cpu_{part}_{name}_us"] = statistics.median(samples)
    for key, over in (("1", "grpc_1"), ("16", "grpc_16"), ("sdk", "grpc_1b")):
        mine = runs["http_" + key] if key != "sdk" else runs["sdk_1"]
        ratios = [h / g for h, g in zip(mine, runs[over], strict=True)]
        res[f"ratio_{key}"] = statistics.median(ratios)
        res[f"ratio_{key}_range"] = (min(ratios), max(ratios))
    # Time to first token and whole short answers, request by request.
    first: dict[str, list[float]] = {"grpc": [], "http": []}
    whole: dict[str, list[float]] = {"grpc": [], "http": []}
    for i in range(probes):
        prompt = PROMPTS[i % 16]
        order = ("grpc", "http") if i % 2 == 0 else ("http", "grpc")
        for name in order:
            one = sides.grpc_stream if name == "grpc" else sides.http_stream
            first[name].append((await one(prompt, 1))[1])
            await asyncio.sleep(0.02)
        for name in order:
            one = sides.grpc_whole if name == "grpc" else sides.http_whole
            whole[name].append((await one(prompt, 16))[1])
            await asyncio.sleep(0.02)
    for kind, values in (("ttft", first), ("whole", whole)):
        g, h = values["grpc"], values["http"]
        res[f"{kind}_grpc_ms"] = statistics.median(g) * 1000
        res[f"{kind}_http_ms"] = statistics.median(h) * 1000
        diffs = [(b - a) * 1000 for a, b in zip(g, h, strict=True)]
        res[f"{kind}_raw_ms"] = {k: [round(x * 1000, 2) for x in v] for k, v in values.items()}
        res[f"{kind}_added_ms"] = statistics.median(diffs)
        q = statistics.quantiles(diffs, n=4)
        res[f"{kind}_added_iqr"] = (q[0], q[2])
    return res


def _bench(model: Path, rounds: int, tokens: int, probes: int, lanes: int) -> dict[str, Any]:
    http_port = _free_port()
    extra = f'[http]\nlisten = ["127.0.0.1:{http_port}"]\naccept_any_token = true\n'
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(model, Path(tmp), lanes, 0, extra_toml=extra)
        try:

            async def run() -> dict[str, Any]:
                sides = Sides(daemon.target, http_port)
                try:
                    await sides.open()
                    return await measure(
                        sides, rounds, tokens, probes, psutil.Process(daemon.proc.pid)
                    )
                finally:
                    await sides.close()

            return asyncio.run(run())
        finally:
            daemon.stop()


def _range(r: tuple[float, float], fmt: str = ".2f") -> str:
    return f"{r[0]:{fmt}}–{r[1]:{fmt}}"


def render(res: dict[str, Any], args: argparse.Namespace, note: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    model = args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model
    cmd = "python scripts/bench_http.py" + (" --quick" if args.quick else "")
    lines = [
        HEAD,
        "",
        f"`{cmd} --model {model}`, "
        f"{when}, {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; one `edge-agent serve` subprocess "
        f"serving gRPC and HTTP on loopback (`engine.lanes = {args.lanes}`); greedy, "
        f"{args.tokens} tokens per stream; {args.rounds} rounds, {args.probes} alternating "
        "probes for the latency rows. " + note,
        "",
        "| measure | gRPC | HTTP | HTTP vs gRPC | target |",
        "|---|---|---|---|---|",
    ]
    for n in ("1", "16"):
        lines.append(
            f"| streaming, {n} concurrent stream{'s' if n == '16' else ''} (tok/s) "
            f"| {res[f'grpc_{n}']:.1f} | {res[f'http_{n}']:.1f} "
            f"| **{res[f'ratio_{n}']:.2f}×** ({_range(res[f'ratio_{n}_range'])}) | ≥ 0.95 |"
        )
    lines += [
        f"| time to first token, p50 (ms) | {res['ttft_grpc_ms']:.2f} | {res['ttft_http_ms']:.2f} "
        f"| **{res['ttft_added_ms']:+.2f} ms** (IQR {_range(res['ttft_added_iqr'])}) | ≤ 2 ms |",
        f"| whole 16-token answer, p50 (ms; HTTP non-streaming JSON) | {res['whole_grpc_ms']:.2f} "
        f"| {res['whole_http_ms']:.2f} | **{res['whole_added_ms']:+.2f} ms** "
        f"(IQR {_range(res['whole_added_iqr'])}) | |",
        f"| daemon process CPU per token, 16 streams (µs; engine worker excluded) "
        f"| {res['cpu_daemon_grpc_us']:.0f} | {res['cpu_daemon_http_us']:.0f} "
        f"| {res['cpu_daemon_http_us'] - res['cpu_daemon_grpc_us']:+.0f} µs | |",
        f"| client process CPU per token, 16 streams (µs) | {res['cpu_client_grpc_us']:.0f} "
        f"| {res['cpu_client_http_us']:.0f} "
        f"| {res['cpu_client_http_us'] - res['cpu_client_grpc_us']:+.0f} µs | |",
        f"| `openai` SDK (AsyncOpenAI), 1 stream (tok/s) | {res['grpc_1b']:.1f} "
        f"| {res['sdk_1']:.1f} "
        f"| {res['ratio_sdk']:.2f}× ({_range(res['ratio_sdk_range'])}) | |",
        "",
        "How to read it. Throughput ratios are medians of per-round ratios (the two sides "
        "alternate, the order turning each round); the latency rows are medians of per-request "
        "differences, HTTP minus gRPC, with their interquartile range. The HTTP client is "
        "httpx reading SSE lines and decoding each JSON chunk, as a lean client does; the "
        "`openai` SDK row adds that library's own per-chunk cost (pydantic models), measured "
        "against gRPC in the same round. The CPU rows split the cost of a token: the daemon "
        "process (both servers share its one event loop; the engine worker is a separate "
        "process) and the benchmark's client process. Both compete with the engine worker for "
        "the same cores here, so at 16 streams, where the engine uses every core, what a side "
        "costs in CPU comes off the engine's tokens/s; on a box whose tokens cost more "
        "(Mistral Small 3: hundreds of ms per token on CPU) or whose clients run elsewhere, "
        "that per-token cost vanishes.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    bench = ROOT / ".cache/bench-model"
    parser.add_argument("--model", type=Path, default=bench if bench.exists() else None)
    parser.add_argument("--quick", action="store_true", help="2 rounds, 16 tokens, 10 probes")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--lanes", type=int, default=3)
    parser.add_argument("--note", default="", help="a sentence on the box's state, for the doc")
    parser.add_argument("--write", type=Path, default=None, help="update this BENCHMARKS.md")
    args = parser.parse_args()
    if args.model is None:
        parser.error(
            "no --model and no .cache/bench-model (scripts/make_demo_model.py --size bench)"
        )
    args.model = args.model.resolve()
    if args.quick:
        args.rounds, args.tokens, args.probes = 2, 16, 10
    res = _bench(args.model, args.rounds, args.tokens, args.probes, args.lanes)
    print(json.dumps(res), flush=True)
    section = render(res, args, args.note)
    print(section)
    if args.write:
        replace_section(section, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
