"""Streams stalled behind a prompt: chunked prefill against whole-prompt prefill, side by side.

    python scripts/bench_prefill.py --model .cache/bench-model [--chunks 0,32,256]
        [--rounds 3] [--long-tokens 2048]

One engine worker per `engine.prefill_chunk_tokens` value (0 = every prompt read whole), all
loaded up front in this process and driven step by step exactly as the worker's own loop
drives them (the daemon's pipe left out); the rounds alternate between them (the order
turns each round) so the shared machine's drift falls on every side alike. In each round
three streams decode together; once each has 40 tokens, a long prompt (about
--long-tokens tokens) arrives, as a message reaches the worker, between two steps.
Reported per worker, median and range over the rounds:

  * stall ratio: the streams' inter-token gap p99 over the long prompt's prefill (from its
    arrival to its first token) ÷ their idle inter-token p50 before it arrived (goal <= 3);
  * the long prompt's time to first token, and that ÷ the whole-prompt worker's.

Tokens are counted in the engine, not as messages: a model with random weights (the bench
model) emits long runs of tokens that decode to no text, and a client sees none of them.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_report import cell

from edge_agent.engine._types import GenerationRequest, Message
from edge_agent.engine._worker import _EngineLane, _GeneratorLane, _Out, _Worker

STREAMS = ["Tell me about rivers.", "Tell me about mountains.", "Tell me about the sea."]
IDLE_FROM, IDLE_TO = 10, 40  # the idle window, in each stream's tokens (regrouping settles first)
SENTENCE = "The archive keeps every record of the harbour, its ships, their cargo and crews. "
LONG_ID = 99


def _worker(model: Path, chunk: int, lanes: int, stall_target: float = 0.0) -> _Worker:
    """``stall_target``: ``engine.prefill_stall_target`` (0: the fixed chunk)."""
    spec: dict[str, Any] = {
        "model_dir": str(model),
        "providers": ["cpu"],
        "provider_options": {},
        "intra_op_threads": 0,  # the daemon's defaults
        "thread_spinning": True,
        "lanes": lanes,
        "max_batch_size": 16,
        "regroup_max_tokens": 16,
        "prefill_chunk_tokens": chunk,
        "prefill_stall_target": stall_target,
    }
    return _Worker(None, spec)  # type: ignore[arg-type]  # driven here, no pipe


def _job(prompt: str, tokens: int) -> dict[str, Any]:
    request = GenerationRequest(
        messages=(Message("user", prompt),), max_tokens=tokens, min_tokens=tokens
    )
    return request.to_job()


def _generated(worker: _Worker, rid: int) -> int:
    place = worker.where.get(rid)
    if isinstance(place, _GeneratorLane):
        return place.job.completion_tokens
    if isinstance(place, _EngineLane):
        return next(j.completion_tokens for j in place.jobs.values() if j.rid == rid)
    return -1  # finished


def _round(worker: _Worker, long_prompt: str) -> dict[str, float]:
    out = _Out()
    stamps: dict[int, list[float]] = {rid: [] for rid in range(len(STREAMS))}
    for rid, prompt in enumerate(STREAMS):
        worker.submit(rid, _job(prompt, 3000), out)
    sent = arrived = 0.0
    after = 0
    while after < 3:  # a few steps past the long prompt's first token close the last gaps
        worker.advance(_Out())
        now = time.perf_counter()
        for rid, times in stamps.items():
            if _generated(worker, rid) > len(times):
                times.append(now)
        if not sent and min(len(t) for t in stamps.values()) >= IDLE_TO:
            sent = time.perf_counter()
            worker.submit(LONG_ID, _job(long_prompt, 4), out)  # as it arrives between steps
        elif sent and not arrived and _generated(worker, LONG_ID) >= 1:
            arrived = now
        elif arrived:
            after += 1
    for rid in [*stamps, LONG_ID]:
        worker.cancel(rid)
    while any(lane.busy for lane in worker.lanes):  # cancelled requests close at their next step
        worker.advance(_Out())
    idle = [b - a for t in stamps.values() for a, b in itertools.pairwise(t[IDLE_FROM:IDLE_TO])]
    # Every gap that overlaps the prefill: the one a whole prompt stalls ends after it.
    loaded = [
        b - a for t in stamps.values() for a, b in itertools.pairwise(t) if b > sent and a < arrived
    ]
    p50, p99 = statistics.median(idle), float(np.percentile(loaded, 99))
    return {
        "idle_p50_ms": p50 * 1000,
        "loaded_p50_ms": statistics.median(loaded) * 1000,
        "loaded_p99_ms": p99 * 1000,
        "ratio": p99 / p50,
        "ttft_s": arrived - sent,
    }


def _long_prompt(worker: _Worker, tokens: int) -> tuple[str, int]:
    """A prompt of about ``tokens`` tokens for this model's tokenizer, and its exact count."""

    def count(text: str) -> int:
        return len(worker.prompts.build((Message("user", text),), (), ""))

    per = count(SENTENCE * 20) / 20
    text = SENTENCE * max(1, int(tokens / per))
    return text, count(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--chunks", default="0,32,256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long-tokens", type=int, default=2048)
    parser.add_argument("--lanes", type=int, default=3)
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    workers = {c: _worker(args.model, c, args.lanes) for c in chunks}
    long_prompt, n = _long_prompt(workers[chunks[0]], args.long_tokens)
    for worker in workers.values():  # every worker pays its first long prefill before measuring
        _round(worker, SENTENCE * 8)
    print(f"long prompt: {n} tokens; {args.rounds} rounds", file=sys.stderr)
    results: dict[int, list[dict[str, float]]] = {c: [] for c in chunks}
    for r in range(args.rounds):
        for c in chunks if r % 2 == 0 else chunks[::-1]:
            result = _round(workers[c], long_prompt)
            results[c].append(result)
            print(f"round {r} chunk {c}: {result}", file=sys.stderr)
    print(render(results, n, args.rounds))


def render(results: dict[int, list[dict[str, float]]], tokens: int, rounds: int) -> str:
    whole = results.get(0)
    lines = [
        f"Long prompt {tokens} tokens, 3 decoding streams, {rounds} alternating rounds; "
        "median (range).",
        "",
        "| `prefill_chunk_tokens` | idle gap p50 | gap p50 / p99 during the prefill "
        "| stall ratio (goal ≤ 3) | long prompt TTFT | TTFT ÷ whole |",
        "|---|---|---|---|---|---|",
    ]
    for c, rows in results.items():
        ttft = [r["ttft_s"] for r in rows]
        vs = (
            cell([t / w["ttft_s"] for t, w in zip(ttft, whole, strict=True)], ".2f")
            if whole
            else "–"
        )
        lines.append(
            f"| {c or '0 (whole)'} | {cell([r['idle_p50_ms'] for r in rows], '.1f')} ms "
            f"| {cell([r['loaded_p50_ms'] for r in rows], '.0f')} / "
            f"{cell([r['loaded_p99_ms'] for r in rows], '.0f')} ms "
            f"| {cell([r['ratio'] for r in rows], '.1f')} | {cell(ttft, '.2f')} s | {vs} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
