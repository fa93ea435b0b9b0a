"""Where a prefill's time goes: onnxruntime's own per-operator profile of one model run.

    .venv/bin/python scripts/profile_prefill.py --model .cache/ms3-2l --tokens 512 --write

Loads the model with the daemon's session settings, runs a warm-up prefill, then with
onnxruntime's run profiling on (og's ``enable_profiling`` runtime option) the measured prefill
of ``--tokens`` prompt tokens and ``--decode`` single-token steps; groups the kernel time of
the prefill and of the median decode step by operator, and the int4 matmuls by projection
(qkv, o, gate/up, down, lm_head), with the achieved GFLOP/s of each (2·rows·K·N from the
profile's own shapes). ``--write`` puts the table in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench_huge_pages import restart_on_worker_malloc, runs_on_worker_malloc
from bench_report import replace_section

from edge_agent.engine._cpus import resolve_intra_op_threads
from edge_agent.engine._providers import load_model
from edge_agent.pressure import read_genai_config

HEAD = "## Prefill profile: onnxruntime per operator (scripts/profile_prefill.py)"
# Node names of the builder's matmuls: /model/layers.N/attn/qkv_proj/MatMul, /lm_head/MatMul.
PROJECTION = re.compile(r"/(?:attn|mlp)/([a-z_]+?)(?:_proj)?/|/(lm_head)/")


@dataclass
class Bucket:
    ms: float = 0.0
    flops: float = 0.0
    calls: int = 0
    rows: int = 0  # of the matmuls' outputs: the positions they ran on


@dataclass
class RunProfile:
    """Kernel time of one model run, by group name."""

    wall_ms: float
    groups: dict[str, Bucket] = field(default_factory=lambda: defaultdict(Bucket))

    @property
    def kernel_ms(self) -> float:
        return sum(b.ms for b in self.groups.values())


def _group(event: dict[str, Any]) -> tuple[str, float, int]:
    args = event.get("args", {})
    op = str(args.get("op_name", "?"))
    if op != "MatMulNBits":
        return op, 0.0, 0
    match = PROJECTION.search(event["name"])
    part = next((g for g in match.groups() if g), "?") if match else "?"
    flops, rows = 0.0, 0
    try:
        k = int(next(iter(args["input_type_shape"][0].values()))[-1])
        out = [int(d) for d in next(iter(args["output_type_shape"][0].values()))]
        flops = 2.0 * k * float(np.prod(out))
        rows = int(np.prod(out[:-1]))
    except (KeyError, IndexError, StopIteration, TypeError, ValueError):
        pass
    return f"MatMulNBits {part}", flops, rows


def parse(profile: list[dict[str, Any]]) -> list[RunProfile]:
    """The model runs in order, each with the kernel events inside its time window."""
    runs = sorted(
        (e for e in profile if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    out = [RunProfile(wall_ms=r["dur"] / 1000) for r in runs]
    spans = [(r["ts"], r["ts"] + r["dur"]) for r in runs]
    for event in profile:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        for index, (start, end) in enumerate(spans):
            if start <= event["ts"] <= end:
                name, flops, rows = _group(event)
                bucket = out[index].groups[name]
                bucket.ms += event["dur"] / 1000
                bucket.flops += flops
                bucket.rows += rows
                bucket.calls += 1
                break
    return out


def profile_model(model_dir: Path, tokens: int, decode: int, seed: int) -> list[RunProfile]:
    """The measured prefill's run, then each decode step's, from onnxruntime's run profiles."""
    import onnxruntime_genai as og

    model = load_model(og, model_dir, ["cpu"], {}, resolve_intra_op_threads(0), 1).model
    genai: dict[str, Any] = read_genai_config(model_dir)
    vocab = int(genai["model"]["vocab_size"])
    ids = np.random.default_rng(seed).integers(1000, vocab, tokens, dtype=np.int32)
    runs: list[RunProfile] = []
    with tempfile.TemporaryDirectory(prefix="profile-prefill-") as tmp_s:
        tmp = Path(tmp_s)
        for measured in (False, True):  # a warm-up prefill first, unprofiled
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=tokens + decode + 1, do_sample=False)
            generator = og.Generator(model, params)
            # A run option: the runs from here write their profile to this prefix plus the
            # second it started, so each call gets a prefix of its own (runs in one second
            # would overwrite each other's file).
            if measured:
                generator.set_runtime_option("enable_profiling", str(tmp / "run-0000"))
            generator.append_tokens(ids)
            for step in range(1, decode + 1 if measured else 1):
                generator.set_runtime_option("enable_profiling", str(tmp / f"run-{step:04d}"))
                generator.generate_next_token()
            if measured:
                generator.set_runtime_option("enable_profiling", "0")
            del generator
        for path in sorted(tmp.glob("run-*.json")):
            runs.extend(parse(json.loads(path.read_text())))
    del model
    if len(runs) < 2:  # the measured prefill and at least one decode step
        raise SystemExit(f"expected at least 2 profiled model runs, found {len(runs)}")
    return runs


def table(run: RunProfile, tokens: int, top: int = 12) -> list[str]:
    rows = sorted(run.groups.items(), key=lambda kv: -kv[1].ms)
    total = run.kernel_ms
    lines = [
        "| operator (int4 matmuls by projection) | ms | share | GFLOP/s |",
        "|---|---|---|---|",
    ]
    rest = Bucket()
    for index, (name, bucket) in enumerate(rows):
        if index >= top:
            rest.ms += bucket.ms
            continue
        rate = f"{bucket.flops / bucket.ms / 1e6:.0f}" if bucket.flops and bucket.ms else ""
        lines.append(f"| {name} | {bucket.ms:.1f} | {bucket.ms / total:.1%} | {rate} |")
    if rest.ms:
        lines.append(f"| (the other {len(rows) - top}) | {rest.ms:.1f} | {rest.ms / total:.1%} | |")
    flops = sum(b.flops for b in run.groups.values())
    matmul = sum(b.ms for n, b in run.groups.items() if n.startswith("MatMulNBits"))
    lines.append(
        f"| **all kernels** ({tokens} tokens; run wall {run.wall_ms:.0f} ms) | {total:.1f} | "
        f"int4 matmuls {matmul / total:.1%} | {flops / matmul / 1e6:.0f} |"
        if matmul
        else f"| **all kernels** | {total:.1f} | | |"
    )
    return lines


def render(model_dir: Path, tokens: int, prefill: RunProfile, step: RunProfile) -> str:
    head = prefill.groups.get("MatMulNBits lm_head", Bucket())
    lm = head.ms
    lines = [
        HEAD,
        "",
        f"Model `{model_dir.name}`, {tokens}-token prompt read in one run, {os.cpu_count()} "
        "cores, the daemon's session settings (spinning threads, arena off)"
        + (
            ", the worker's malloc (`glibc.malloc.hugetlb=1`)"
            if runs_on_worker_malloc()
            else ", 4 KiB pages (`--no-huge-pages`)"
        )
        + ", onnxruntime's profiler (kernel time per node; a warm-up prefill first). GFLOP/s = "
        "2·rows·K·N of the node's own shapes ÷ its kernel time.",
        "",
        "**Prefill**",
        "",
        *table(prefill, tokens),
        "",
        f"The LM head ran on {head.rows} of the {tokens} prompt positions: {lm:.0f} ms = "
        f"{lm / prefill.kernel_ms:.1%} of this model's prefill kernels"
        + (
            " (the recipe's graph edit makes it the last position only: "
            "edge_agent/bundles/_last_logits.py)."
            if head.rows < tokens
            else " (a graph without the recipe's last-position edit; its cost per position is "
            "fixed, the layers' grows with depth: on 40 layers about 1/20 of this share)."
        ),
        "",
        "**One decode step** (median of the steps by wall time)",
        "",
        *table(step, 1),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--decode", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    parser.add_argument(
        "--no-huge-pages", action="store_true", help="without the worker's malloc settings"
    )
    args = parser.parse_args()
    restart_on_worker_malloc(not args.no_huge_pages)
    runs = profile_model(args.model, args.tokens, args.decode, args.seed)
    prefill, steps = runs[0], runs[1:]
    step = sorted(steps, key=lambda r: r.wall_ms)[len(steps) // 2]
    text = render(args.model, args.tokens, prefill, step)
    print(text)
    print(f"decode step wall ms: median {statistics.median(r.wall_ms for r in steps):.1f}")
    if args.write:
        replace_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
