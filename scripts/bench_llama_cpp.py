"""llama.cpp on a GGUF of the same weights: the reference scripts/bench_real_shape.py names.

Not a dependency of the project: ``pip install llama-cpp-python`` into the bench's venv (built
for this CPU, e.g. ``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON
-DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON"``; AMX off, it faults on
this VM). The GGUF: the same seeded checkpoint (``scripts/make_real_shape_model.py
--checkpoint-only``) converted by llama.cpp's ``convert_hf_to_gguf.py`` and quantised with
``python scripts/bench_llama_cpp.py --quantize F16.gguf Q4_0.gguf --type q4_0``.

``--per-layer`` separates what a layer costs from what the LM head and embedding cost, for
onnxruntime-genai and llama.cpp side by side: the same prompts on an L1- and an L2-layer copy
of each (``--og DIR DIR --gguf FILE FILE``), rounds alternating; a layer's time is
(T(L2) − T(L1)) ÷ (L2 − L1), the rest is T(L1) − L1 · layer. That is what a 40-layer model's
time is made of (40 · layer + rest, an extrapolation), where the 2-layer copy's whole-model
ratio is dominated by the 131072-wide LM head.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_huge_pages import restart_on_worker_malloc
from bench_report import replace_section

from edge_agent.pressure import read_genai_config

# llama_ftype values of llama.h: the quantisations the benchmark compares.
FTYPES = {"q4_0": 2, "q4_k_m": 15, "q8_0": 7}


class LlamaCpp:
    """One llama.cpp context, used as bench_real_shape's ``Raw`` is: same ids, same threads."""

    def __init__(self, gguf: Path, threads: int, context: int) -> None:
        from llama_cpp import Llama

        self.path = gguf
        # Default batch sizes of llama.cpp's own tools (n_batch 2048, n_ubatch 512); logits
        # only for each batch's last position, as llama.cpp's server computes them.
        self.llm: Any = Llama(
            model_path=str(gguf),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=context,
            n_batch=min(2048, context),
            n_ubatch=512,
            logits_all=False,
            verbose=False,
        )

    def run(self, ids: np.ndarray[Any, np.dtype[np.int32]], tokens: int) -> tuple[float, float]:
        """Seconds to the first token (greedy), and decode tok/s after it."""
        llm = self.llm
        llm.reset()  # the next eval removes the KV past position 0
        start = time.perf_counter()
        llm.eval([int(t) for t in ids])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        stamps = [time.perf_counter()]
        for _ in range(tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            stamps.append(time.perf_counter())
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
        return stamps[0] - start, rate


def quantize(source: Path, target: Path, kind: str, threads: int) -> None:
    """llama.cpp's own quantiser (llama-quantize) through the library's C API."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0:
        raise SystemExit(f"llama_model_quantize failed ({code})")


def _layers(model_dir: Path) -> int:
    config: dict[str, Any] = read_genai_config(model_dir)
    return int(config["model"]["decoder"]["num_hidden_layers"])


def per_layer(
    og_dirs: list[Path], ggufs: list[Path], sizes: list[int], rounds: int, threads: int
) -> dict[str, Any]:
    """Seconds of prefill (per size) and of a decode token, per layer and for the rest, for
    both runtimes, and their 40-layer extrapolations."""
    from bench_real_shape import Raw, WorkerWay

    layers = [_layers(d) for d in og_dirs]
    context = max(sizes) + 128
    sides: dict[str, list[Any]] = {
        "og": [Raw(d) for d in og_dirs],
        "og worker": [WorkerWay(d) for d in og_dirs],
        "llama.cpp": [LlamaCpp(g, threads, context) for g in ggufs],
    }
    rng = np.random.default_rng(5)
    # seconds[side][measure][model index] = samples; measure: "prefill N" or "decode"
    seconds: dict[str, dict[str, list[list[float]]]] = {
        side: {m: [[], []] for m in [*(f"prefill {n}" for n in sizes), "decode"]} for side in sides
    }
    for r in range(rounds + 1):  # round 0 warms up
        order = list(sides) if r % 2 else list(reversed(sides))
        for n in sizes:
            ids = rng.integers(1000, 131072, n, dtype=np.int32)
            for side in order:
                for i, runner in enumerate(sides[side]):
                    took = runner.run(ids, 1)[0]
                    if r:
                        seconds[side][f"prefill {n}"][i].append(took)
        ids = rng.integers(1000, 131072, 16, dtype=np.int32)
        for side in order:
            for i, runner in enumerate(sides[side]):
                rate = runner.run(ids, 48)[1]
                if r:
                    seconds[side]["decode"][i].append(1.0 / rate)
    out: dict[str, Any] = {"layers": layers, "sizes": sizes, "rounds": rounds, "measures": {}}
    for measure in seconds["llama.cpp"]:
        row: dict[str, Any] = {}
        for side in sides:
            t1, t2 = (statistics.median(v) for v in seconds[side][measure])
            layer = (t2 - t1) / (layers[1] - layers[0])
            rest = t1 - layers[0] * layer
            row[side] = {"t": [t1, t2], "layer": layer, "rest": rest, "at40": rest + 40 * layer}
        out["measures"][measure] = row
    return out


HEAD = "## Per layer: onnxruntime-genai and llama.cpp (scripts/bench_llama_cpp.py --per-layer)"
OG_SIDES = {
    "og": "og raw",
    "og worker": "og as the worker runs it",
}


def render_per_layer(res: dict[str, Any], command: str) -> str:
    l1, l2 = res["layers"]
    lines = [
        HEAD,
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores.",
        "",
        f"Per layer (the {l1}- and {l2}-layer copies side by side, {res['rounds']} alternating "
        "rounds, medians; the recipe's int4 block 32 on onnxruntime-genai, two ways: *raw*, an "
        "og.Engine with og's session defaults reading the prompt in one step, and *as the "
        "worker runs it*, its session settings (arena off) and a Generator reading 128-token "
        "chunks; llama.cpp Q4_0 of the same checkpoint). "
        + (
            "The process ran with the worker's malloc (`glibc.malloc.hugetlb=1`, all sides). "
            if res.get("huge_pages")
            else ""
        )
        + "Seconds; **ratio = llama.cpp ÷ og time** (> 1: og faster).",
        "",
        f"| measure | og {l2}-layer | llama.cpp {l2}-layer | **{l2}-layer ratio** | og a layer | "
        "llama.cpp a layer | **a layer's ratio** | og LM head + rest | llama.cpp rest | "
        "40 layers, extrapolated ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for measure, row in res["measures"].items():
        ll = row["llama.cpp"]
        for side, label in OG_SIDES.items():
            if side not in row:
                continue
            og = row[side]
            whole = ll["t"][1] / og["t"][1]
            lines.append(
                f"| {measure}, {label} | {og['t'][1]:.3f} | {ll['t'][1]:.3f} | **{whole:.2f}** "
                f"| {og['layer']:.3f} | {ll['layer']:.3f} | **{ll['layer'] / og['layer']:.2f}** "
                f"| {og['rest']:.3f} | {ll['rest']:.3f} | {ll['at40'] / og['at40']:.2f} |"
            )
    lines += [
        "",
        "A rest below zero means a cheap last layer: there llama.cpp runs the attention "
        "output and the MLP only for the positions it returns logits for (a prompt's last), "
        "and the LM head only for those; so does the recipe's graph (edge_agent/bundles/"
        "_last_logits.py; the builder's plain graph runs every layer and the LM head for every "
        "position). With T(L) = (L − 1) · layer + that last layer + head, or L · layer + head "
        "for a plain graph, T(40) = rest + 40 · layer either way "
        "(extrapolated, not measured).",
        "",
        "The reference, made here offline: llama-cpp-python 0.3.36 built for this CPU (AVX-512 "
        "VNNI/VBMI/BF16, AMX off); each copy's seeded checkpoint "
        "(`scripts/make_real_shape_model.py --layers L --checkpoint-only --out hf-Ll`, the "
        "same weights `edge-agent bundle build --from-hf hf-Ll --ep cpu --context 4096` "
        "exports) converted by llama.cpp's `convert_hf_to_gguf.py --outtype bf16` (with the "
        "bundle's tokenizer.json beside it, tekken.json moved aside) and quantised with "
        "`python scripts/bench_llama_cpp.py --quantize BF16.gguf Q4_0.gguf --type q4_0`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantize", nargs=2, type=Path, metavar=("SOURCE", "TARGET"))
    parser.add_argument("--type", choices=sorted(FTYPES), default="q4_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-layer", action="store_true", help="needs --og and --gguf")
    parser.add_argument("--og", nargs=2, type=Path, metavar=("L1_DIR", "L2_DIR"))
    parser.add_argument("--gguf", nargs=2, type=Path, metavar=("L1_GGUF", "L2_GGUF"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    parser.add_argument(
        "--no-huge-pages",
        action="store_true",
        help="run --per-layer without the worker's malloc (engine.huge_page_malloc)",
    )
    args = parser.parse_args()
    if args.per_layer:
        if not (args.og and args.gguf):
            parser.error("--per-layer needs --og L1_DIR L2_DIR and --gguf L1_GGUF L2_GGUF")
        huge_pages = restart_on_worker_malloc(not args.no_huge_pages)
        res = per_layer(args.og, args.gguf, args.sizes, args.rounds, args.threads)
        res["huge_pages"] = huge_pages
        print(json.dumps(res), file=sys.stderr)
        command = "python scripts/bench_llama_cpp.py " + " ".join(sys.argv[1:])
        section = render_per_layer(res, command.replace(" --write", ""))
        print(section)
        if args.write:
            replace_section(section)
        return 0
    if not args.quantize:
        parser.error("nothing to do: --quantize SOURCE TARGET, or --per-layer")
    source, target = args.quantize
    quantize(source, target, args.type, args.threads)
    print(f"{target}: {target.stat().st_size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
