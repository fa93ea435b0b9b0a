"""Huge pages for the worker's malloc, on against off, side by side in one run.

    .venv/bin/python scripts/bench_huge_pages.py --model .cache/ms3/ms3-2l --rounds 5 --write

Each round starts two child processes on the model, one with ``GLIBC_TUNABLES=
glibc.malloc.hugetlb=1`` (what the daemon gives its engine worker, ``engine.huge_page_malloc``)
and one without (alternating which goes first). Each loads the model with the worker's session
settings (its intra-op threads, spinning, onnxruntime's arena off), warms up, then measures a
32-token prefill read whole and 512- and 2048-token prefills read in the worker's 128-token
chunks (each on a fresh Generator), the page faults each took, decode tok/s, and the
resident memory at load and after the run once freed heap is trimmed (what the resting worker
does). Ratios are on ÷ off per round; medians and ranges. ``--write`` puts the table in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_report import cell, replace_section

from edge_agent._malloc import huge_page_malloc, release_free_heap
from edge_agent.engine._cpus import resolve_intra_op_threads
from edge_agent.engine._providers import load_model

HEAD = "## Huge pages: the worker's malloc on transparent huge pages (scripts/bench_huge_pages.py)"
CHUNK = 128  # engine.prefill_chunk_tokens' default
SIZES = (32, 512, 2048)  # prompt tokens; above CHUNK read in chunks, as the worker does
DECODE_STEPS = 32
MIB = 1024 * 1024


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def runs_on_worker_malloc() -> bool:
    """Whether this process started as the daemon starts its engine worker: with
    ``glibc.malloc.hugetlb=1`` (``engine.huge_page_malloc``)."""
    return "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "")


def restart_on_worker_malloc(wanted: bool = True) -> bool:
    """Start this script again with the worker's malloc tunable unless ``wanted`` is False or
    its environment already decides it (glibc reads tunables at start-up only); returns
    ``runs_on_worker_malloc()``."""
    tuned = huge_page_malloc(os.environ)
    if wanted and tuned != dict(os.environ):
        os.execve(sys.executable, [sys.executable, *sys.argv], tuned)  # noqa: S606
    return runs_on_worker_malloc()


def _prefills(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """(tokens, chunk; 0 = read whole) for each size."""
    return [(n, CHUNK if n > CHUNK else 0) for n in sizes]


def child(model_dir: Path, sizes: tuple[int, ...]) -> dict[str, Any]:
    """One side of a round, in a process of its own (the tunable is read at start-up)."""
    import numpy as np
    import onnxruntime_genai as og

    model = load_model(og, model_dir, ["cpu"], {}, resolve_intra_op_threads(0), 16).model
    release_free_heap()
    at_load = _rss()
    rng = np.random.default_rng(7)

    def generator(tokens: int, chunk: int) -> tuple[Any, float, int]:
        ids = rng.integers(1000, 100000, size=tokens).astype(np.int32)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False)
        gen = og.Generator(model, params)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for i in range(0, tokens, chunk or tokens):
            gen.append_tokens(ids[i : i + (chunk or tokens)])
        seconds = time.perf_counter() - start
        return gen, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

    # Warm-up: the first run of a shape pays onnxruntime's set-up.
    generator(min(512, max(sizes)), CHUNK)
    out: dict[str, Any] = {"rss_load": at_load}
    for tokens, chunk in _prefills(sizes):
        _, seconds, faults = generator(tokens, chunk)
        out[f"prefill_{tokens}"] = tokens / seconds
        out[f"faults_{tokens}"] = faults
    gen, _, _ = generator(32, 0)
    gen.generate_next_token()
    start = time.perf_counter()
    for _ in range(DECODE_STEPS):
        gen.generate_next_token()
    out["decode"] = DECODE_STEPS / (time.perf_counter() - start)
    del gen
    release_free_heap()
    out["rss_after"] = _rss()
    return out


def _side(model_dir: Path, sizes: tuple[int, ...], huge: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    wanted = ",".join(map(str, sizes))
    if huge:
        env = huge_page_malloc(env)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--model", str(model_dir), "--sizes", wanted],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the {'on' if huge else 'off'} side failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def render(
    model_dir: Path, sizes: tuple[int, ...], rounds: list[dict[str, dict[str, Any]]], stamp: str
) -> str:
    def column(side: str, key: str, scale: float = 1.0) -> list[float]:
        return [r[side][key] / scale for r in rounds]

    def ratio(key: str) -> list[float]:
        return [r["on"][key] / r["off"][key] for r in rounds]

    rows = [
        f"`python scripts/bench_huge_pages.py --model {model_dir} --rounds {len(rounds)} "
        f"--sizes {','.join(map(str, sizes))}`, "
        f"{stamp}, {os.cpu_count()} cores. Medians (range) over the rounds; each round one "
        "process per side, started alternately; ratio = on ÷ off within a round.",
        "",
        "| measure | off (4 KiB pages) | on (`glibc.malloc.hugetlb=1`) | **on ÷ off** |",
        "|---|---|---|---|",
    ]
    for tokens, chunk in _prefills(sizes):
        how = f"in {chunk}-token chunks" if chunk else "whole"
        key = f"prefill_{tokens}"
        rows.append(
            f"| prefill tok/s, {tokens} tokens {how} | {cell(column('off', key), '.1f')} | "
            f"{cell(column('on', key), '.1f')} | **{cell(ratio(key), '.2f')}** |"
        )
        key = f"faults_{tokens}"
        rows.append(
            f"| page faults in that prefill | {cell(column('off', key), '.0f')} | "
            f"{cell(column('on', key), '.0f')} | {cell(ratio(key), '.3f')} |"
        )
    rows.append(
        f"| decode tok/s | {cell(column('off', 'decode'), '.1f')} | "
        f"{cell(column('on', 'decode'), '.1f')} | **{cell(ratio('decode'), '.2f')}** |"
    )
    for key, label in (("rss_load", "RSS at load"), ("rss_after", "RSS after the run, trimmed")):
        rows.append(
            f"| {label}, MiB | {cell(column('off', key, MIB), '.0f')} | "
            f"{cell(column('on', key, MIB), '.0f')} | {cell(ratio(key), '.3f')} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="prompt tokens")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    args = parser.parse_args()
    sizes = tuple(int(n) for n in args.sizes.split(","))
    if args.child:
        print(json.dumps(child(args.model, sizes)))
        return 0
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(args.rounds):
        order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
        got = {side: _side(args.model, sizes, side == "on") for side in order}
        rounds.append(got)
        print(
            f"round {r + 1}: "
            + ", ".join(
                f"{side} prefill {sizes[-1]} {got[side][f'prefill_{sizes[-1]}']:.0f} tok/s "
                f"decode {got[side]['decode']:.1f}"
                for side in ("off", "on")
            ),
            flush=True,
        )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    table = render(args.model, sizes, rounds, stamp)
    print(table)
    if args.write:
        replace_section(f"{HEAD}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
