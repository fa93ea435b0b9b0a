"""Quantisation error vs speed: int4 export options measured against an fp32 export.

Runs offline in the build venv (``pip install -e '.[build]'``; docs/BENCHMARKS.md
"Quantisation: error vs speed" has the figures and the command):

    .venv-build/bin/python scripts/quant_error.py --work .cache/quant --out quant.json

One seeded random Mistral-format checkpoint (a scaled shape, ``--hidden`` etc.; the real
131072-token Tekken vocabulary), twice: plain random weights and the same weights with
outliers injected (a few large input channels in every weight, sparse large entries, and
RMSNorm gains that make a few hidden dimensions' activations large, as real LLMs have). Each
is exported by the builder as fp32 (the reference) and as int4 with the CPU recipe's options
at each ``--block-sizes``; each int4 export is also run with ``accuracy_level=0`` (fp32
compute; the builder's default on CPU is 4, int8 compute), made by rewriting the attribute
in the graph, as the weights do not change. Per variant: KL(fp32 || int4) of the
next-token distribution at every prompt position (teacher-forced through
onnxruntime-genai's decode path, fixed V7 chat prompts), top-1 agreement with fp32, prefill
and decode tokens/s measured side by side (variants interleaved, median of rounds), and the
size on disk. Random weights are not the real model: their error is not Mistral Small 3's.
``--init-std`` and ``--head-scale`` make the next-token distributions sharper (the runs in
docs/BENCHMARKS.md). The scaled shape keeps the builder's peak near 2 GB; the real hidden
size (5120) with even one layer is 1.9B parameters, ~12 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
# Fixed V7 chat prompts: the daemon's kind of traffic (system prompt, multi-turn, code).
PROMPTS: tuple[tuple[dict[str, str], ...], ...] = (
    (
        {"role": "system", "content": "You are a concise assistant on an edge box."},
        {"role": "user", "content": "What is the capital of France, and why is it famous?"},
    ),
    (
        {"role": "user", "content": "Write a Python function that reverses a linked list."},
        {"role": "assistant", "content": "Here is an iterative version using two pointers."},
        {"role": "user", "content": "Now make it recursive and explain the base case."},
    ),
    (
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Summarise: the meeting moved to Tuesday at 10:00 UTC."},
    ),
    ({"role": "user", "content": "Translate into German: the train leaves at seven."},),
)


@dataclass(frozen=True, slots=True)
class Variant:
    """One export to measure: fp32 (the reference) or int4 at a block size."""

    name: str
    precision: str  # "fp32" or "int4"
    block_size: int | None = None
    accuracy_level: int | None = None  # MatMulNBits attribute; None for fp32

    def builder_options(self, recipe_options: Sequence[str]) -> tuple[str, ...]:
        """The recipe's CPU options with this block size (nothing for fp32)."""
        if self.precision == "fp32":
            return ()
        kept = [o for o in recipe_options if not o.startswith(("block_size=", "accuracy_level="))]
        return (f"block_size={self.block_size}", f"accuracy_level={self.accuracy_level}", *kept)


def variants(block_sizes: Iterable[int], accuracy_levels: Iterable[int]) -> list[Variant]:
    """fp32 first (the reference), then int4 per block size x accuracy level."""
    levels = list(accuracy_levels)
    out = [Variant("fp32", "fp32")]
    for bs in block_sizes:
        if bs < 16 or bs & (bs - 1):
            raise ValueError(f"block size {bs}: MatMulNBits takes a power of two >= 16")
        out += [Variant(f"int4-b{bs}-acc{lv}", "int4", bs, lv) for lv in levels]
    return out


def log_softmax(logits: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


def kl_divergence(
    ref_logits: npt.NDArray[np.floating[Any]], test_logits: npt.NDArray[np.floating[Any]]
) -> npt.NDArray[np.float64]:
    """KL(P_ref || P_test) in nats per row: sum p_ref * (log p_ref - log p_test)."""
    if ref_logits.shape != test_logits.shape:
        raise ValueError(f"shapes differ: {ref_logits.shape} vs {test_logits.shape}")
    lp, lq = log_softmax(ref_logits), log_softmax(test_logits)
    kl: npt.NDArray[np.float64] = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return np.maximum(kl, 0.0)  # rounding can leave -1e-17 for identical rows


def top1_agreement(
    ref_logits: npt.NDArray[np.floating[Any]], test_logits: npt.NDArray[np.floating[Any]]
) -> float:
    return float(np.mean(ref_logits.argmax(axis=-1) == test_logits.argmax(axis=-1)))


def error_summary(
    ref_logits: npt.NDArray[np.floating[Any]], test_logits: npt.NDArray[np.floating[Any]]
) -> dict[str, float]:
    kl = kl_divergence(ref_logits, test_logits)
    lp = log_softmax(ref_logits)
    return {
        # How peaked the reference is: ln(131072) = 11.8 nats would be uniform noise.
        "ref_entropy": float((-(np.exp(lp) * lp).sum(axis=-1)).mean()),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1": top1_agreement(ref_logits, test_logits),
        "positions": float(kl.size),
    }


# ---- everything below needs the build extra (torch, transformers, the builder) ----


def make_checkpoint(args: argparse.Namespace, hf_dir: Path, outliers: bool) -> int:
    import torch
    from transformers import MistralConfig, MistralForCausalLM
    from v7_checkpoint import real_config, tekken_path

    config = real_config(args.layers)
    config.update(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_attention_heads=args.hidden // 128,
        num_key_value_heads=max(1, args.hidden // 512),
        initializer_range=args.init_std,
    )
    torch.manual_seed(args.seed)  # the same base weights with and without outliers
    keys = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
    cfg = MistralConfig(**keys)
    cfg.architectures = ["MistralForCausalLM"]
    model = MistralForCausalLM(cfg).eval()
    if args.head_scale != 1.0:  # sharp next-token distributions without a chaotic body
        with torch.no_grad():
            model.lm_head.weight *= args.head_scale
    if outliers:
        _inject_outliers(model, args.seed + 1)
    model = model.to(torch.bfloat16)
    model.save_pretrained(hf_dir, safe_serialization=True)
    shutil.copyfile(tekken_path(), hf_dir / "tekken.json")
    return sum(p.numel() for p in model.parameters())


def _inject_outliers(model: Any, seed: int) -> None:
    """Large input channels (1 in 128, x8) and sparse large entries (5e-4 of them, 10 sigma)
    in every weight; RMSNorm gains x20 on 4 hidden dimensions (large activations there)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if weight is None:
                continue
            w = weight.data
            if w.dim() == 2:
                std = float(w.std())
                cols = torch.randperm(w.shape[1], generator=gen)[: max(1, w.shape[1] // 128)]
                w[:, cols] *= 8.0
                mask = torch.rand(w.shape, generator=gen) < 5e-4
                signs = torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1
                w[mask] = (signs * 10.0 * std)[mask]
            elif w.dim() == 1 and name.endswith("norm"):
                dims = torch.randperm(w.shape[0], generator=gen)[:4]
                w[dims] *= 20.0


def export(stage: Path, out: Path, cache: Path, variant: Variant, options: Sequence[str]) -> None:
    from edge_agent._offline import offline_environment
    from edge_agent.bundles._recipe import builder_command, patch_genai_config

    cmd = list(builder_command(stage, out, cache, "cpu", variant.builder_options(options)))
    cmd[cmd.index("-p") + 1] = variant.precision
    print(f"  export {variant.name} -> {out}", flush=True)
    done = subprocess.run(cmd, env=offline_environment(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"builder failed for {variant.name}:\n{done.stdout[-3000:]}")
    patch_genai_config(out, 2048, 1)


def with_accuracy_level(src: Path, dst: Path, level: int) -> None:
    """The same weights with MatMulNBits' accuracy_level rewritten (a compute setting)."""
    import onnx

    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name != "model.onnx":
            os.link(item, dst / item.name)  # ORT refuses data behind a symlink
    graph = onnx.load(str(src / "model.onnx"), load_external_data=False)
    for node in graph.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = level
    onnx.save(graph, str(dst / "model.onnx"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model"))


def prompt_ids(model: Any) -> list[list[int]]:
    import onnxruntime_genai as og

    tok = og.Tokenizer(model)
    out = []
    for messages in PROMPTS:
        text = tok.apply_chat_template(json.dumps(list(messages)), add_generation_prompt=True)
        out.append([int(t) for t in tok.encode(text)])
    return out


def teacher_forced_logits(model: Any, ids: list[int]) -> npt.NDArray[np.float32]:
    """The next-token logits after each prompt token, one token at a time (decode path)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 8, batch_size=1)
    gen = og.Generator(model, params)
    rows = []
    for t in ids:
        gen.append_tokens([t])
        rows.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
    return np.stack(rows)


def speed(model: Any, ids: list[int], decode_tokens: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) for one prompt then greedy decoding."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + decode_tokens + 1, batch_size=1)
    gen = og.Generator(model, params)
    started = time.perf_counter()
    gen.append_tokens(ids)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(decode_tokens):
        gen.generate_next_token()
    decode = time.perf_counter() - started
    return len(ids) / prefill, decode_tokens / decode


def measure(args: argparse.Namespace, folders: dict[str, Path]) -> dict[str, dict[str, float]]:
    import onnxruntime_genai as og

    models = {name: og.Model(str(folder)) for name, folder in folders.items()}
    prompts = prompt_ids(models["fp32"])
    ref = [teacher_forced_logits(models["fp32"], p) for p in prompts]
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        test = ref if name == "fp32" else [teacher_forced_logits(model, p) for p in prompts]
        results[name] = error_summary(np.concatenate(ref), np.concatenate(test))
        results[name]["bytes"] = float(folder_bytes(folders[name]))
    long_prompt = [t for p in prompts for t in p] * (
        args.prefill_tokens // sum(map(len, prompts)) + 1
    )
    long_prompt = long_prompt[: args.prefill_tokens]
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(args.rounds):  # interleaved: a busy neighbour slows every variant alike
        for name, model in models.items():
            timings[name].append(speed(model, long_prompt, args.decode_tokens))
    for name, runs in timings.items():
        results[name]["prefill_tok_s"] = statistics.median(r[0] for r in runs)
        results[name]["decode_tok_s"] = statistics.median(r[1] for r in runs)
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| weights | variant | KL mean (nats) | KL max | top-1 vs fp32 | prefill tok/s |"
        " decode tok/s | size MB | fp32 entropy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, rows in results.items():
        for name, r in rows.items():
            lines.append(
                f"| {kind} | {name} | {r['kl_mean']:.4f} | {r['kl_max']:.4f} | {r['top1']:.3f} |"
                f" {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | {r['bytes'] / 1e6:.0f} |"
                f" {r['ref_entropy']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (new)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024, help="multiple of 512")
    parser.add_argument("--intermediate", type=int, default=6144)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--accuracy-levels", type=int, nargs="+", default=[4, 0])
    parser.add_argument("--kinds", nargs="+", default=["plain", "outliers"])
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--init-std", type=float, default=0.02, help="weight std (larger: sharper logits)"
    )
    parser.add_argument(
        "--head-scale", type=float, default=1.0, help="LM head weights x this (sharper logits)"
    )
    args = parser.parse_args(argv)
    if args.hidden % 512:
        parser.error("--hidden must be a multiple of 512 (head_dim 128, 4 heads per KV head)")
    from edge_agent.bundles._recipe import OPTIONS, stage_checkpoint

    matrix = variants(args.block_sizes, args.accuracy_levels)
    args.work.mkdir(parents=True, exist_ok=False)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in args.kinds:
        base = args.work / kind
        hf = base / "hf"
        params = make_checkpoint(args, hf, outliers=kind == "outliers")
        print(f"{kind}: {params:,} parameters", flush=True)
        stage_checkpoint(hf, base / "stage")
        folders: dict[str, Path] = {}
        exported: dict[int, Path] = {}
        for v in matrix:
            folder = base / v.name
            if v.precision == "int4" and v.block_size in exported:
                with_accuracy_level(exported[v.block_size], folder, v.accuracy_level or 0)
            else:
                export(base / "stage", folder, base / "cache", v, OPTIONS["cpu"])
                if v.block_size is not None:
                    exported[v.block_size] = folder
            folders[v.name] = folder
        shutil.rmtree(base / "cache", ignore_errors=True)
        results[kind] = measure(args, folders)
        print(table({kind: results[kind]}), flush=True)
    shape = {
        k: getattr(args, k)
        for k in ("layers", "hidden", "intermediate", "seed", "init_std", "head_scale")
    }
    report = {
        "shape": shape,
        "variants": [asdict(v) for v in matrix],
        "results": results,
        "cpu_count": os.cpu_count(),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    main()
