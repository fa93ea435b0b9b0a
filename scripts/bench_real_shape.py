"""Where a real 24B on a CPU box hurts, measured as ratios side by side in one run.

    python scripts/bench_real_shape.py --model .cache/ms3-2l [--quick] [--rounds 3]
        [--write docs/BENCHMARKS.md] [--only stall] [--stall-targets 0,1.5]

The model is meant to be the real-shape recipe (``scripts/make_tekken_model.py --shape real
--layers N``: Mistral Small 3's exact config with N layers, int4 as the recipe says; needs the
build venv and ~15 GB of RAM to export); any ONNX GenAI folder works (the bench model, the
V7 fixture) for a quick look. Every figure is a ratio of two things measured in the same run,
alternating round by round so the box's drift hits both sides; medians and ranges:

  * prefill tok/s at 32, 512 and 2048 prompt tokens: the daemon (a real ``edge-agent serve``
    subprocess over gRPC, its defaults: chunked prefill, prefix reuse) ÷ the raw og.Engine in
    this process (the same prompt ids, threads and spinning; onnxruntime's own arena);
  * decode tok/s ÷ the memory-bandwidth limit (numpy copy bandwidth ÷ weight bytes per token);
  * inter-token p99 of 3 decoding streams while a ~2048-token prompt arrives ÷ their idle
    p50 (an engine worker driven step by step, as scripts/bench_prefill.py does), one worker
    per ``engine.prefill_stall_target`` (0: the fixed chunk), with the long prompt's TTFT;
    ``--only stall`` runs this part alone and prints its rows;
  * time to first token of turn 5 of a conversation (history of ~2000 tokens) ÷ that of a
    fresh prompt of only turn 5's new message; the same turn in another data class (a cache
    partition of its own: read whole) beside it; and of 15 requests sharing a ~1000-token
    system prompt after the first ÷ a fresh prompt of only their question;
  * the daemon's worker RSS after the run ÷ (its RSS at load + the live KV it reports), its
    anonymous memory apart from the weights file's mapped pages.

``--quick`` runs fewer rounds and tokens (a smoke run, or a small model on a busy box).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from bench_llama_cpp import LlamaCpp
from bench_local import _free_port, _memory_bandwidth
from bench_prefill import _long_prompt, _round
from bench_prefill import _worker as _stall_worker
from bench_report import cell, replace_section
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc
from edge_agent.bundles._last_logits import MARKER, PREFIX
from edge_agent.engine._cpus import resolve_intra_op_threads
from edge_agent.engine._prompt import load_prompt_builder
from edge_agent.engine._providers import load_model
from edge_agent.engine._types import Message
from edge_agent.pressure import read_genai_config

ROOT = Path(__file__).resolve().parent.parent
FILLER = (
    "The archive keeps every record of the harbour, its ships, their cargo and crews, "
    "and the clerk writes each arrival in the ledger before the tide turns again. "
)
HEAD = "## Real shape: prefill, stalls, reuse, memory (scripts/bench_real_shape.py)"
MS3 = ROOT / "models" / "mistral-small-3" / "config.json"


# -- the raw engine --------------------------------------------------------------------------


class Raw:
    """og.Engine in this process: what the daemon adds to, with the same prompt ids."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime_genai as og

        self.og = og
        threads = resolve_intra_op_threads(0)
        self.model = load_model(og, model_dir, ["cpu"], {}, threads, 16, True, True).model
        self.tokenizer = og.Tokenizer(self.model)
        self.prompts = load_prompt_builder(model_dir, self.tokenizer)

    def ids(self, messages: list[tuple[str, str]]) -> np.ndarray[Any, np.dtype[np.int32]]:
        built = self.prompts.build(tuple(Message(r, c) for r, c in messages), (), "")
        return np.asarray(built, dtype=np.int32)

    def run(self, ids: np.ndarray[Any, np.dtype[np.int32]], tokens: int) -> tuple[float, float]:
        """Seconds to the first token, and decode tok/s after it."""
        og = self.og
        engine = og.Engine(self.model)
        buffer = engine.create_event_buffer(64)
        request = engine.create_request()
        options = og.TurnOptions(request)
        options.set_max_generated_tokens(tokens)
        options.set_min_generated_tokens(tokens)
        options.set_temperature(0.0)
        start = time.perf_counter()
        request.begin_turn(ids, options)
        stamps: list[float] = []
        while engine.has_pending_requests():
            for event in engine.run(buffer):
                if event.flags.value & 1:
                    stamps.append(time.perf_counter())
        request.close()
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
        return stamps[0] - start, rate


class WorkerWay:
    """og as the daemon's worker runs one long prompt: its session settings (onnxruntime's
    arena off), a Generator reading the prompt ``engine.prefill_chunk_tokens`` at a time. Run
    the process with the worker's malloc (``engine.huge_page_malloc``) for its figures."""

    def __init__(self, model_dir: Path, chunk: int = 128) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.chunk = chunk
        self.model = load_model(og, model_dir, ["cpu"], {}, resolve_intra_op_threads(0), 16).model

    def run(self, ids: np.ndarray[Any, np.dtype[np.int32]], tokens: int) -> tuple[float, float]:
        """Seconds to the first token, and decode tok/s after it."""
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False)
        gen = self.og.Generator(self.model, params)
        start = time.perf_counter()
        for i in range(0, len(ids), self.chunk):
            gen.append_tokens(ids[i : i + self.chunk])
        stamps: list[float] = []
        while len(stamps) < tokens and not gen.is_done():
            gen.generate_next_token()
            stamps.append(time.perf_counter())
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
        return stamps[0] - start, rate


# -- the daemon ------------------------------------------------------------------------------


class Daemon:
    """A real ``edge-agent serve`` on the model, its engine defaults, metrics on a port."""

    def __init__(self, model_dir: Path, tmp: Path) -> None:
        port, self.metrics_port = _free_port(), _free_port()
        config = tmp / "agent.toml"
        config.write_text(
            f'[paths]\nstate_dir = "{tmp}/state"\nruntime_dir = "{tmp}/run"\n'
            f'[server]\nlisten = ["127.0.0.1:{port}"]\n'
            f'[engine]\nmodel_dir = "{model_dir}"\nload_timeout_s = 1800\n'
            f'[logging]\nlevel = "WARNING"\n[metrics]\nport = {self.metrics_port}\n'
            "[discovery]\nenabled = false\n"
            "[auth]\nallow_anonymous_loopback = true\n"
            "[auth.rate_limits.client]\nrequests_per_s = 0\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "serve", "--config", str(config)]
        )
        self.target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 1800
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("the daemon did not start")
                time.sleep(0.5)
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.InferenceStub(self.channel)

    def worker_memory(self) -> tuple[int, int]:
        """The worker's resident bytes: anonymous (its heap: activations, KV, prepacked weights)
        and file-backed (mostly the pages of model.onnx.data it maps: the embedding table is
        read from the file, a row per token met; clean pages the kernel may drop)."""
        anon = file = 0
        for worker in psutil.Process(self.proc.pid).children():
            for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "RssAnon":
                    anon += int(value.split()[0]) * 1024
                elif key in ("RssFile", "RssShmem"):
                    file += int(value.split()[0]) * 1024
        return anon, file

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
        return values[0] if values else 0.0

    def chat(
        self,
        messages: list[tuple[str, str]],
        tokens: int,
        data_class: int = 2,
        exact: bool = False,
    ) -> tuple[float, str, int]:
        """Seconds to the last message, the text, and the prompt tokens. With ``tokens`` = 1
        the last message comes with the first token: that is the time to first token (the
        first message of a random-weight model can come tokens later: its tokens may decode
        to no text). ``exact``: exactly ``tokens`` (``min_tokens``; such a request never
        shares a cached lane, as a client's would not)."""
        request = pb.ChatRequest(
            messages=[pb.ChatMessage(role=r, content=c) for r, c in messages],
            max_tokens=tokens,
            data_class=data_class,  # type: ignore[arg-type]
        )
        if exact:
            request.min_tokens = tokens
        start = time.perf_counter()
        text, prompt = "", 0
        for reply in self.stub.Chat(request, timeout=3600):
            text += reply.delta
            if reply.finish_reason:
                prompt = reply.usage.prompt_tokens
        return time.perf_counter() - start, text, prompt

    def stop(self) -> None:
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


# -- measurements ----------------------------------------------------------------------------


def _text_of(raw: Raw, tokens: int, head: str) -> str:
    """A user message whose prompt is about ``tokens`` tokens (at least the head's), starting
    with ``head``."""
    words = (FILLER * (tokens // 8 + 1)).split()
    lo, hi = 0, len(words)
    while lo < hi:  # the most filler words that keep the prompt within ``tokens``
        mid = (lo + hi + 1) // 2
        if len(raw.ids([("user", " ".join([head, *words[:mid]]))])) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join([head, *words[:lo]])


def _prefill(
    raw: Raw, daemon: Daemon, sizes: list[int], rounds: int, refs: dict[str, LlamaCpp]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sizes:
        got_all: dict[str, list[float]] = {side: [] for side in ["raw", "daemon", *refs]}
        counts = []
        for r in range(rounds):
            # A head of its own each round: no cached lane shares half of it.
            text = _text_of(raw, size, f"Round {r} of size {size}.")
            ids = raw.ids([("user", text)])
            sides = list(got_all) if r % 2 == 0 else list(reversed(got_all))
            for side in sides:
                if side == "raw":
                    got_all["raw"].append(len(ids) / raw.run(ids, 1)[0])
                elif side == "daemon":
                    seconds, _, prompt = daemon.chat([("user", text)], 1)
                    assert prompt == len(ids), (prompt, len(ids))
                    got_all["daemon"].append(prompt / seconds)
                else:
                    got_all[side].append(len(ids) / refs[side].run(ids, 1)[0])
            counts.append(len(ids))
        daemon_tps = got_all["daemon"]
        out[f"prefill_{size}"] = {
            "tokens": statistics.median(counts),
            "raw": got_all["raw"],
            "daemon": daemon_tps,
            "ratio": [d / r for d, r in zip(daemon_tps, got_all["raw"], strict=True)],
            "refs": {
                name: {
                    "tps": got_all[name],
                    "ratio": [d / x for d, x in zip(daemon_tps, got_all[name], strict=True)],
                }
                for name in refs
            },
        }
    return out


def _decode(
    raw: Raw,
    daemon: Daemon,
    model_dir: Path,
    tokens: int,
    rounds: int,
    refs: dict[str, LlamaCpp],
) -> dict[str, Any]:
    raw_tps, daemon_tps = [], []
    ref_tps: dict[str, list[float]] = {name: [] for name in refs}
    for r in range(rounds):
        question = f"Tell me about harbour number {r}."
        ids = raw.ids([("user", question)])
        raw_tps.append(raw.run(ids, tokens)[1])
        for name, ref in refs.items():
            ref_tps[name].append(ref.run(ids, tokens)[1])
        # Two answers, 1 and ``tokens`` long, to the same short prompt (short prompts are
        # batched on an Engine lane and never cached): the difference is pure decode.
        one, _, _ = daemon.chat([("user", question)], 1, exact=True)
        many, _, _ = daemon.chat([("user", question)], tokens, exact=True)
        daemon_tps.append((tokens - 1) / (many - one))
    bandwidth = _memory_bandwidth()
    weights = sum(f.stat().st_size for f in model_dir.glob("model.onnx*"))
    # A decode step reads every weight once except the embedding table, of which it gathers
    # one row: estimated as int4 block 32 with fp32 scales (0.625 bytes a weight), the
    # recipe's quantised embedding (a float one would be larger: the limit errs low).
    genai: dict[str, Any] = read_genai_config(model_dir)
    model = genai["model"]
    embedding = int(model["vocab_size"] * model["decoder"]["hidden_size"] * 0.625)
    weights -= embedding
    limit = bandwidth / weights
    return {
        "bandwidth_gbs": bandwidth / 1e9,
        "weights_gb": weights / 1e9,
        "limit_tps": limit,
        "raw": raw_tps,
        "daemon": daemon_tps,
        "raw_fraction": [t / limit for t in raw_tps],
        "daemon_fraction": [t / limit for t in daemon_tps],
        "refs": {
            name: {
                "tps": values,
                "ratio": [d / x for d, x in zip(daemon_tps, values, strict=True)],
            }
            for name, values in ref_tps.items()
        },
    }


def _stall(model_dir: Path, long_tokens: int, rounds: int, targets: list[float]) -> dict[str, Any]:
    """One worker per ``engine.prefill_stall_target`` (the daemon's other defaults), rounds
    alternating between them; a target of 0 is the fixed 128-token chunk."""
    workers = {t: _stall_worker(model_dir, 128, 3, t) for t in targets}
    long_prompt, n = _long_prompt(workers[targets[0]], long_tokens)
    for worker in workers.values():
        _round(worker, FILLER * 4)  # pays its first long prefill before measuring
    results: dict[float, list[dict[str, float]]] = {t: [] for t in targets}
    for r in range(rounds):
        for t in targets if r % 2 == 0 else targets[::-1]:
            results[t].append(_round(workers[t], f"{r} {long_prompt}"))
            print(f"stall round {r} target {t}: {results[t][-1]}", file=sys.stderr)
    del workers
    return {
        "long_tokens": n,
        "targets": {
            t: {key: [x[key] for x in rows] for key in rows[0]} for t, rows in results.items()
        },
    }


def _reuse(raw: Raw, daemon: Daemon, turn_tokens: int, rounds: int, answer: int) -> dict[str, Any]:
    turn5, fresh5, whole5, history = [], [], [], []
    shared, fresh_q, first_shared = [], [], []
    for r in range(rounds):
        messages: list[tuple[str, str]] = []
        for turn in range(1, 5):
            messages.append(("user", _text_of(raw, turn_tokens, f"Conversation {r}, turn {turn}.")))
            _, text, _ = daemon.chat(messages, answer)
            messages.append(("assistant", text))
        new = _text_of(raw, turn_tokens, f"Conversation {r}, turn 5.")
        messages.append(("user", new))
        seconds, _, prompt = daemon.chat(messages, 1)
        turn5.append(seconds)
        history.append(prompt)
        fresh5.append(daemon.chat([("user", f"Fresh {r}. {new}")], 1)[0])
        # The same turn in another data class: a partition of its own, so read whole.
        whole5.append(daemon.chat(messages, 1, data_class=3)[0])
        system = _text_of(raw, 2 * turn_tokens, f"Template {r}: you are the harbour's clerk.")
        times = []
        for i in range(16):
            question = f"Question {i}: which ship came in at hour {i}?"
            times.append(daemon.chat([("system", system), ("user", question)], 1)[0])
            if i == 0:
                fresh_q.append(daemon.chat([("user", question)], 1)[0])
        first_shared.append(times[0])
        shared.append(statistics.median(times[1:]))
    return {
        "history_tokens": statistics.median(history),
        "turn5": turn5,
        "fresh5": fresh5,
        "whole5": whole5,
        "turn5_ratio": [a / b for a, b in zip(turn5, fresh5, strict=True)],
        "whole5_ratio": [a / b for a, b in zip(whole5, fresh5, strict=True)],
        "shared": shared,
        "first_shared": first_shared,
        "fresh_q": fresh_q,
        "shared_ratio": [a / b for a, b in zip(shared, fresh_q, strict=True)],
    }


# -- report ----------------------------------------------------------------------------------


def _gguf_label(path: Path) -> str:
    """Its quantisation, from llama.cpp's naming (``ms3-2l-Q4_0.gguf``), else the file name."""
    stem = path.stem
    for kind in ("Q4_K_M", "Q4_0", "Q8_0", "F16", "BF16"):
        if stem.upper().endswith(kind):
            return kind
    return stem


def _layers_factor(model_dir: Path) -> tuple[int, float, float] | None:
    """(layers, prefill factor, decode factor) scaling per-token work of this model to 40
    layers, when it is the real shape: the layers' share grows, the LM head and embeddings
    stay. With the recipe's last-position edit a prefill runs the LM head (and the last
    layer's MLP) once per prompt row; a decode step runs everything."""
    genai: dict[str, Any] = read_genai_config(model_dir)
    config = genai["model"]
    decoder = config["decoder"]
    real = json.loads(MS3.read_text())
    if decoder["hidden_size"] != real["hidden_size"]:
        return None
    hidden, inter, vocab = real["hidden_size"], real["intermediate_size"], real["vocab_size"]
    heads, kv, head = (
        real["num_attention_heads"],
        real["num_key_value_heads"],
        real["head_dim"],
    )
    layer = hidden * head * (2 * heads + 2 * kv) + 3 * hidden * inter
    lm_head = vocab * hidden
    layers = int(decoder["num_hidden_layers"])
    decode = (40 * layer + lm_head) / (layers * layer + lm_head)
    graph = (model_dir / decoder["filename"]).read_bytes()
    if f"{PREFIX}gather_1".encode() in graph:
        # The last layer's MLP (and o_proj's norm) run on one position: a prompt token costs
        # the other layers whole and the last one's attention part.
        attention = hidden * head * (2 * heads + 2 * kv) / layer
        prefill = (39 + attention) / (layers - 1 + attention)
    elif MARKER.encode() in graph:
        prefill = 40 / layers  # the LM head once per prompt
    else:
        prefill = decode
    return layers, prefill, decode


def _extrapolation(model_dir: Path, res: dict[str, Any]) -> list[str]:
    factor = _layers_factor(model_dir)
    if factor is None:
        return []
    layers, fp, fd = factor
    d, u = res["decode"], res["reuse"]
    return [
        "",
        f"**Extrapolated to 40 layers** (not measured: per-token work × {fp:.1f} in prefill, "
        f"× {fd:.1f} in decode, the {layers}-layer weights' share scaled, the LM head and "
        "embeddings kept; the prefill factor counts what the recipe's graph runs once per "
        "prompt, the LM head and the last layer's MLP, only once): prefill "
        + ", ".join(
            f"{v['tokens']:.0f} tokens ≈ {v['tokens'] / statistics.median(v['daemon']) * fp:.0f} s"
            for k, v in res.items()
            if k.startswith("prefill_")
        )
        + f" to the first token; decode ≈ {statistics.median(d['daemon']) / fd:.2f} tok/s; "
        f"turn 5 with reuse ≈ {statistics.median(u['turn5']) * fp:.0f} s vs read whole "
        f"≈ {statistics.median(u['whole5']) * fp:.0f} s.",
    ]


def _stall_rows(s: dict[str, Any]) -> list[str]:
    rows = []
    fixed = s["targets"].get(0.0)
    for target, v in s["targets"].items():
        what = f"stall target {target:g}" if target else "fixed 128-token chunk"
        ttft = f"its TTFT {cell(v['ttft_s'], '.1f')} s"
        if fixed is not None and target:
            cost = [a / b for a, b in zip(v["ttft_s"], fixed["ttft_s"], strict=True)]
            ttft += f" = {cell(cost, '.2f')}× the fixed chunk's"
        rows.append(
            f"| 3 streams' gap p99 while a {s['long_tokens']}-token prompt arrives ÷ idle p50 "
            f"({what}; {ttft}) | idle p50 {cell(v['idle_p50_ms'], '.1f')} ms | p99 "
            f"{cell(v['loaded_p99_ms'], '.0f')} ms | **{cell(v['ratio'], '.1f')}** | ≤ 3 |"
        )
    return rows


def render(
    model_dir: Path, res: dict[str, Any], rounds: int, quick: bool, ggufs: tuple[Path, ...] = ()
) -> str:
    lines = [
        HEAD,
        "",
        f"`python scripts/bench_real_shape.py --model {model_dir}"
        f"{' --quick' if quick else ''}{''.join(f' --gguf {g}' for g in ggufs)}`, "
        f"{time.strftime('%Y-%m-%d')}, {rounds} rounds, "
        f"{resolve_intra_op_threads(0)} intra-op threads. Medians (range).",
        "",
        "| measure | raw / reference | daemon / measured | **ratio** | goal |",
        "|---|---|---|---|---|",
    ]
    for key, value in res.items():
        if key.startswith("prefill_"):
            lines.append(
                f"| prefill tok/s, {value['tokens']:.0f}-token prompt | "
                f"{cell(value['raw'], '.1f')} | {cell(value['daemon'], '.1f')} | "
                f"**{cell(value['ratio'], '.2f')}** "
                "| ≥ 1 (daemon ÷ raw) |"
            )
            for name, ref in value["refs"].items():
                lines.append(
                    f"| prefill tok/s, {value['tokens']:.0f}-token prompt, ÷ llama.cpp {name} | "
                    f"{cell(ref['tps'], '.1f')} | {cell(value['daemon'], '.1f')} | "
                    f"**{cell(ref['ratio'], '.2f')}** | ≥ 1 (daemon ÷ llama.cpp) |"
                )
    if "decode" not in res:  # --only stall
        return "\n".join([*lines, *_stall_rows(res["stall"])]) + "\n"
    d = res["decode"]
    lines.append(
        f"| decode tok/s ÷ bandwidth limit ({d['limit_tps']:.1f} tok/s = "
        f"{d['bandwidth_gbs']:.1f} GB/s copy ÷ {d['weights_gb']:.2f} GB weights read a token) | "
        f"{cell(d['raw'], '.1f')} tok/s = {cell(d['raw_fraction'], '.2f')} | "
        f"{cell(d['daemon'], '.1f')} tok/s | **{cell(d['daemon_fraction'], '.2f')}** | ≥ 0.85 |"
    )
    for name, ref in d["refs"].items():
        lines.append(
            f"| decode tok/s ÷ llama.cpp {name} | {cell(ref['tps'], '.1f')} | "
            f"{cell(d['daemon'], '.1f')} | **{cell(ref['ratio'], '.2f')}** | ≥ 1 |"
        )
    lines += _stall_rows(res["stall"])
    u = res["reuse"]
    lines.append(
        f"| TTFT of turn 5 ({u['history_tokens']:.0f}-token prompt) ÷ fresh turn-5-only prompt |"
        f" fresh {cell(u['fresh5'], '.2f')} s | turn 5 {cell(u['turn5'], '.2f')} s | "
        f"**{cell(u['turn5_ratio'], '.2f')}** | ≤ 1.3 |"
    )
    lines.append(
        f"| the same turn 5 read whole (another data class) ÷ fresh | | "
        f"{cell(u['whole5'], '.2f')} s | {cell(u['whole5_ratio'], '.2f')} | (no reuse) |"
    )
    lines.append(
        f"| TTFT of requests 2–16 sharing a system prompt ÷ fresh question only | "
        f"fresh {cell(u['fresh_q'], '.2f')} s; the 1st {cell(u['first_shared'], '.2f')} s | "
        f"{cell(u['shared'], '.2f')} s | **{cell(u['shared_ratio'], '.2f')}** | ≤ 1.3 |"
    )
    m = res["memory"]
    load_mb = m["load_anon_mb"] + m["load_file_mb"]
    after_mb = m["after_anon_mb"] + m["after_file_mb"]
    lines.append(
        f"| worker anonymous RSS after ÷ (anonymous at load + live KV) | load "
        f"{m['load_anon_mb']:.0f} MiB + KV {m['kv_mb']:.0f} MiB | {m['after_anon_mb']:.0f} MiB | "
        f"**{m['anon_ratio']:.2f}** | ≤ 1.1 |"
    )
    lines.append(
        f"| worker RSS after ÷ (RSS at load + live KV), with the weights file's mapped pages "
        f"({m['load_file_mb']:.0f} → {m['after_file_mb']:.0f} MiB) | load {load_mb:.0f} MiB + KV "
        f"{m['kv_mb']:.0f} MiB | {after_mb:.0f} MiB | {m['ratio']:.2f} | (clean file pages) |"
    )
    lines += _extrapolation(model_dir, res)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and tokens")
    parser.add_argument("--rounds", type=int, default=0, help="default 3, --quick 2")
    parser.add_argument("--write", type=Path, help="replace this script's section there")
    parser.add_argument("--only", choices=["stall"], help="run only this part (no --write)")
    parser.add_argument(
        "--gguf",
        type=Path,
        action="append",
        default=[],
        help="llama.cpp reference on the same weights (repeatable; scripts/bench_llama_cpp.py)",
    )
    parser.add_argument(
        "--stall-targets", default="0,1.5", help="engine.prefill_stall_target values side by side"
    )
    args = parser.parse_args()
    if args.only and args.write:
        parser.error("--only prints its rows; --write needs the whole run")
    targets = [float(t) for t in args.stall_targets.split(",")]
    model = args.model.resolve()
    rounds = args.rounds or (2 if args.quick else 3)
    genai: dict[str, Any] = read_genai_config(model)
    context = genai["search"]["max_length"]
    sizes = [s for s in (32, 512, 2048) if s + 64 < context]
    res: dict[str, Any] = {}
    if args.only == "stall":
        res["stall"] = _stall(model, min(2048, context - 128), rounds, targets)
        print(render(args.model, res, rounds, args.quick))
        return 0
    raw = Raw(model)
    raw.run(raw.ids([("user", "warm up")]), 2)
    threads = resolve_intra_op_threads(0)
    refs = {_gguf_label(g): LlamaCpp(g, threads, context) for g in args.gguf}
    for ref in refs.values():
        ref.run(raw.ids([("user", "warm up")]), 2)
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(model, Path(tmp))
        try:
            time.sleep(3)  # the first pressure sample and metrics
            load_anon, load_file = daemon.worker_memory()
            daemon.chat([("user", "warm up")], 2)
            res.update(_prefill(raw, daemon, sizes, rounds, refs))
            print(f"prefill: {res}", file=sys.stderr)
            res["decode"] = _decode(raw, daemon, model, 64 if args.quick else 128, rounds, refs)
            print(f"decode: {res['decode']}", file=sys.stderr)
            turn = min(400, (context - 200) // 6)
            res["reuse"] = _reuse(raw, daemon, turn, rounds, 8 if args.quick else 16)
            print(f"reuse: {res['reuse']}", file=sys.stderr)
            time.sleep(5)  # two pressure samples: metrics show the cache as it is now
            # Live KV: the cached lanes' and what the Engine lanes keep (one warm lane at rest).
            kv = daemon.metric("edge_agent_engine_prefix_cached_kv_bytes") + daemon.metric(
                "edge_agent_engine_lane_kv_bytes"
            )
            after_anon, after_file = daemon.worker_memory()
            res["memory"] = {
                "load_anon_mb": load_anon / 2**20,
                "load_file_mb": load_file / 2**20,
                "kv_mb": kv / 2**20,
                "after_anon_mb": after_anon / 2**20,
                "after_file_mb": after_file / 2**20,
                "anon_ratio": after_anon / (load_anon + kv),
                "ratio": (after_anon + after_file) / (load_anon + load_file + kv),
            }
        finally:
            daemon.stop()
    del raw, refs
    res["stall"] = _stall(model, min(2048, context - 128), rounds, targets)
    section = render(args.model, res, rounds, args.quick, tuple(args.gguf))
    print(section)
    if args.write:
        replace_section(section, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
