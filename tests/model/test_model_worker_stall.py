"""The adaptive prefill chunk (``engine.prefill_stall_target``): while other streams decode, a
long prompt's chunk is cut to what the target allows, alone it is read at the configured
size, and the answers are those of a prompt read whole.

The worker is driven step by step on the real demo model. The chunk size depends on measured
times, so the tests pin it with targets at the two ends: a tiny target always cuts to the
smallest chunk, a huge one never cuts; in between they check only the bounds and the counts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from worker_driver import Run, prompt_len, step_worker

from edge_agent.engine._types import GenerationRequest, Message
from edge_agent.engine._worker import (
    FIRST_PREFILL_CHUNK,
    MIN_PREFILL_CHUNK,
    _GeneratorLane,
    _Worker,
)

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
CHUNK = 32
TINY, HUGE = 1e-6, 1e6  # stall targets that always / never cut the chunk
SHORT = "What is a generator?"
LONG = " ".join(
    [
        "A list keeps its items in order; a dict maps each key to one value.",
        "A for loop walks any iterable, and a generator yields one item at a time.",
        "Exceptions climb the stack until a try block with a matching except catches them.",
    ]
    * 5
)


def _worker(target: float, chunk: int = CHUNK) -> _Worker:
    return step_worker(DEMO, prefill_chunk_tokens=chunk, prefill_stall_target=target)


def _job(prompt: str, tokens: int = 16) -> dict[str, Any]:
    request = GenerationRequest(
        messages=(Message("user", prompt),), max_tokens=tokens, min_tokens=tokens
    )
    return request.to_job()


def _read_long(run: Run, rid: int) -> list[int]:
    """Advance until request ``rid``'s prompt is read; the size of every chunk read."""
    lane = run.worker.where[rid]
    assert isinstance(lane, _GeneratorLane)
    sizes: list[int] = []
    while lane.reading:
        read = lane.read
        run.advance()
        if lane.read != read:
            sizes.append(lane.read - read)
            assert run.worker.stats()["prefill_chunk_size"] >= sizes[-1]  # the last cut read
    return sizes


def _alone(job: dict[str, Any]) -> str:
    run = Run(_worker(0.0, chunk=0))  # read whole on an Engine lane
    run.submit(1, job)
    run.finish()
    return run.text[1]


def _long_beside_a_stream(
    target: float, stream_tokens: int = 400, steps: int = 1
) -> tuple[_Worker, Run, int]:
    """A worker at ``target`` decoding a short prompt's stream (``steps`` steps in) when the
    long prompt arrives; with the long prompt's length."""
    worker = _worker(target)
    run = Run(worker)
    run.submit(0, _job(SHORT, tokens=stream_tokens))
    for _ in range(steps):
        run.advance()
    run.submit(1, _job(LONG))
    return worker, run, prompt_len(worker, _job(LONG))


@pytest.mark.parametrize("target", [TINY, 1.5])
def test_alone_a_long_prompt_is_read_at_the_configured_chunk(target: float) -> None:
    worker = _worker(target)
    run = Run(worker)
    run.submit(1, _job(LONG))
    n = prompt_len(worker, _job(LONG))
    sizes = _read_long(run, 1)
    # Nothing else decodes: no stream to protect, so no chunk is cut whatever the target.
    assert sizes == [CHUNK] * (n // CHUNK) + ([n % CHUNK] if n % CHUNK else [])
    assert worker.stats()["prefill_shrunk"] == 0
    run.finish()


def test_beside_a_decoding_stream_the_chunk_shrinks_and_the_answers_hold() -> None:
    worker, run, n = _long_beside_a_stream(TINY)
    tokens = run.generated(0)
    sizes = _read_long(run, 1)
    # Nothing timed yet: the first chunk is a small one that measures; then the smallest.
    assert sizes[0] == FIRST_PREFILL_CHUNK
    assert len(sizes) == 1 + math.ceil((n - FIRST_PREFILL_CHUNK) / MIN_PREFILL_CHUNK)
    assert all(size == MIN_PREFILL_CHUNK for size in sizes[1:-1])
    assert worker.stats()["prefill_shrunk"] == len(sizes)  # every cut was under the chunk
    # The newcomer still gets a chunk every turn: the stream stepped once between two chunks.
    assert run.generated(0) - tokens in (len(sizes) - 1, len(sizes))
    assert run.generated(1) == 1
    run.finish()
    # Read in small pieces beside a stream, the answers are those of prompts read whole.
    assert run.text[1] == _alone(_job(LONG))
    assert run.text[0] == _alone(_job(SHORT, tokens=400))


def test_a_huge_target_cuts_only_the_first_measuring_chunk() -> None:
    worker, run, n = _long_beside_a_stream(HUGE)
    sizes = _read_long(run, 1)
    # Nothing measured yet: a small first chunk times the prefill; then the budget allows
    # more than the configured chunk, which stays the ceiling.
    assert sizes[0] == FIRST_PREFILL_CHUNK
    assert sizes[1:-1] == [CHUNK] * (len(sizes) - 2)
    assert sum(sizes) == n
    assert worker.stats()["prefill_shrunk"] == 1
    run.finish()


def test_the_chunk_grows_back_when_the_stream_ends() -> None:
    worker, run, n = _long_beside_a_stream(TINY, stream_tokens=5)
    assert n > FIRST_PREFILL_CHUNK + 10 * MIN_PREFILL_CHUNK + 2 * CHUNK  # it ends well before
    sizes = _read_long(run, 1)
    assert 0 not in worker.where  # the stream finished during the read
    small = sizes.index(CHUNK)
    assert small >= 2 and sizes[0] == FIRST_PREFILL_CHUNK
    assert all(s == MIN_PREFILL_CHUNK for s in sizes[1:small])
    assert all(s == CHUNK for s in sizes[small:-1])  # alone again: the configured chunk
    run.finish()
    assert run.text[1] == _alone(_job(LONG))


def test_a_middle_target_keeps_every_chunk_within_its_bounds() -> None:
    # Twelve decode steps measured before the prompt arrives.
    worker, run, n = _long_beside_a_stream(1.5, steps=12)
    sizes = _read_long(run, 1)
    assert sum(sizes) == n
    assert all(MIN_PREFILL_CHUNK <= s <= CHUNK for s in sizes[:-1])
    stats = worker.stats()
    # The last chunk reads what is left; whether its cut was under the chunk is in the stats.
    last_cut = stats["prefill_chunk_size"]
    assert sizes[-1] <= last_cut <= CHUNK
    assert stats["prefill_shrunk"] == sum(s < CHUNK for s in sizes[:-1]) + (last_cut < CHUNK)
    assert stats["prefill_chunks"] == len(sizes)
    run.finish()


def test_off_means_the_fixed_chunk_beside_a_stream() -> None:
    worker, run, n = _long_beside_a_stream(0.0)
    assert _read_long(run, 1)[:-1] == [CHUNK] * (math.ceil(n / CHUNK) - 1)
    assert worker.stats()["prefill_shrunk"] == 0
    run.finish()
