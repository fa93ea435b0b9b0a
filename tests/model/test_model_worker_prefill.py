"""Chunked prefill in the engine worker: a long prompt is read in chunks between the other
streams' steps, and what the client gets is the same as if it had been read whole.

The worker is driven in this process step by step, as its loop drives it, on the real demo
model (and the Mistral V7 fixture), so every test counts steps, never time.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import weakref
from pathlib import Path
from typing import Any

import pytest
from tekken_fixture import tekken_model_dir
from worker_driver import Run, answer_alone, prompt_len, step_worker

from edge_agent.engine._types import GenerationRequest, Message
from edge_agent.engine._worker import _EngineLane, _GeneratorLane, _Worker

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
CHUNK = 32
SHORT = "What is a generator?"
LONG = " ".join(
    [
        "A module is a file of Python code; importing it runs it once and keeps its names.",
        "Open a file with open(path) and read it in a with block so it is closed again.",
        "json.dumps turns a dict into text and json.loads turns the text back into a dict.",
    ]
    * 5
)


def _worker(model: Path, chunk: int) -> _Worker:
    return step_worker(model, prefill_chunk_tokens=chunk)


def _job(prompt: str, tokens: int = 24, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"max_tokens": tokens, "min_tokens": tokens} | extra
    return GenerationRequest(messages=(Message("user", prompt),), **fields).to_job()


def _idle(worker: _Worker) -> bool:
    stats = worker.stats()
    return stats["active"] == 0 and stats["pending_in_engines"] == 0 and not worker.where


@pytest.fixture(scope="module")
def chunked() -> _Worker:
    return _worker(DEMO, CHUNK)


@pytest.fixture(scope="module")
def whole() -> _Worker:
    return _worker(DEMO, 0)


SCHEMA = json.dumps(
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="greedy"),
        pytest.param({"min_tokens": 0, "max_tokens": 40}, id="free_to_stop"),
        pytest.param({"json_schema": SCHEMA, "min_tokens": 0, "max_tokens": 30}, id="json"),
        pytest.param({"temperature": 0.9, "seed": 7}, id="seeded"),
    ],
)
def test_a_chunked_answer_equals_the_same_request_read_whole(
    chunked: _Worker, whole: _Worker, extra: dict[str, Any]
) -> None:
    job = _job(LONG, **extra)
    n = prompt_len(chunked, job)
    assert n > 4 * CHUNK
    before = chunked.prefill_chunks
    text, done = answer_alone(chunked, job)
    assert chunked.prefill_chunks - before == math.ceil(n / CHUNK)  # it was read in chunks
    assert (text, done) == answer_alone(whole, job)
    assert whole.prefill_chunks == 0
    reason, prompt, completion, error = done
    assert (prompt, error) == (n, None)  # usage counts the prompt once, however it was read
    assert completion >= 1 and reason in ("stop", "length")
    if extra.get("json_schema"):
        assert text.lstrip().startswith("{")  # the grammar held from the first token
    assert _idle(chunked)


def test_stop_strings_and_min_tokens_hold_for_a_chunked_request(
    chunked: _Worker, whole: _Worker
) -> None:
    free, _ = answer_alone(whole, _job(LONG, tokens=30))
    # A stop string taken from the middle of the answer itself: both must cut there.
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    assert stop.strip()
    job = _job(LONG, tokens=30, stop=[stop])
    text, done = answer_alone(chunked, job)
    assert (text, done) == answer_alone(whole, job)
    assert done[0] == "stop" and stop not in text and free.startswith(text)


def test_the_mistral_v7_fixture_gives_the_same_answer_chunked(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    model = tekken_model_dir(tmp_path_factory.mktemp("v7"))
    chunked, whole = _worker(model, CHUNK), _worker(model, 0)
    job = _job(LONG, tokens=20)
    assert prompt_len(chunked, job) > 4 * CHUNK
    text, done = answer_alone(chunked, job)
    assert chunked.prefill_chunks >= 4
    assert (text, done) == answer_alone(whole, job)


def test_a_running_stream_gets_tokens_between_the_chunks_of_a_long_prompt(
    chunked: _Worker, whole: _Worker
) -> None:
    run = Run(chunked)
    run.submit(0, _job(SHORT, tokens=200))
    run.advance()
    assert run.generated(0) == 1  # a short prompt: its first token after one step
    run.submit(1, _job(LONG, tokens=24))
    lane = chunked.where[1]
    assert isinstance(lane, _GeneratorLane)
    total = len(lane.job.tokens)
    reads: list[int] = []  # the stream's token count at each chunk read
    steps = 0
    while lane.reading:
        read, tokens = lane.read, run.generated(0)
        run.advance()
        steps += 1
        if lane.read != read:
            assert lane.read - read <= CHUNK
            reads.append(run.generated(0))
        else:
            assert run.generated(0) == tokens + 1  # the stream's step
    assert len(reads) == math.ceil(total / CHUNK)
    # Between two chunks the running stream always got a token: it never waits for two.
    assert all(b > a for a, b in itertools.pairwise(reads))
    assert steps <= 2 * len(reads)  # and the long prompt is read every other step
    assert run.generated(1) == 1  # its first token comes with its last chunk
    run.finish()
    # Both answers are what each gets alone: the chunks did not disturb the Engine's stream.
    assert run.text[1] == answer_alone(whole, _job(LONG, tokens=24))[0]
    assert run.text[0] == answer_alone(whole, _job(SHORT, tokens=200))[0]
    assert run.done[0][:3] == ("length", prompt_len(chunked, _job(SHORT)), 200)
    assert _idle(chunked)


def test_a_newcomer_is_served_at_once_and_long_prompts_are_read_one_at_a_time(
    chunked: _Worker,
) -> None:
    run = Run(chunked)
    run.submit(0, _job(SHORT, tokens=100))
    run.advance()
    run.submit(1, _job(LONG))
    run.submit(2, _job(LONG + " Again."))
    first, second = chunked.where[1], chunked.where[2]
    assert isinstance(first, _GeneratorLane) and isinstance(second, _GeneratorLane)
    run.advance()
    run.advance()
    assert first.read > 0
    run.submit(3, _job("Hi"))  # a short newcomer while a long prompt is being read
    for _ in range(3):  # one turn of the rotation: the stream, the chunk, the newcomer
        run.advance()
        assert second.read == 0  # the second long prompt waits for the first to be read
    assert run.generated(3) == 1
    while first.reading:
        assert second.read == 0
        run.advance()
    run.finish()
    assert {rid: run.done[rid][0] for rid in range(4)} == dict.fromkeys(range(4), "length")
    assert _idle(chunked)


def test_a_cancel_during_prefill_frees_the_request(chunked: _Worker) -> None:
    run = Run(chunked)
    run.submit(0, _job(SHORT, tokens=40))
    run.submit(1, _job(LONG))
    lane = chunked.where[1]
    assert isinstance(lane, _GeneratorLane)
    for _ in range(4):
        run.advance()
    assert 0 < lane.read < len(lane.job.tokens)
    read, chunks = lane.read, chunked.prefill_chunks
    gone = weakref.ref(lane)
    del lane
    chunked.cancel(1)
    gc.collect()
    assert gone() is None  # nothing holds the Generator (and its KV cache) any more
    assert chunked.stats()["prefilling"] == 0
    run.finish()
    assert chunked.prefill_chunks == chunks  # not one more chunk was read
    assert 1 not in run.done and not run.text.get(1)  # it ends silently: the daemon ended it
    assert run.done[0][:3] == ("length", prompt_len(chunked, _job(SHORT)), 40)
    assert read > 0 and _idle(chunked)


def test_short_prompts_are_read_whole_on_an_engine_lane() -> None:
    probe = _worker(DEMO, 0)
    fits = prompt_len(probe, _job(SHORT))
    worker = _worker(DEMO, fits)  # the budget is exactly the short prompt
    run = Run(worker)
    run.submit(0, _job(SHORT))
    run.submit(1, _job(SHORT + " Go on."))  # one token over the budget
    assert isinstance(worker.where[1], _GeneratorLane)
    assert prompt_len(worker, _job(SHORT + " Go on.")) > fits
    run.advance()
    assert isinstance(worker.where[0], _EngineLane)
    assert run.generated(0) == 1  # read whole: its first token at its first step
    assert worker.prefill_chunks == 0
    run.finish()
    assert run.text[0] == answer_alone(probe, _job(SHORT))[0]
    assert _idle(worker)


def test_regrouping_goes_on_beside_a_chunked_prompt(chunked: _Worker, whole: _Worker) -> None:
    prompts = ["What is a module?", "How do I open a file?", "What does json.dumps do?"]
    reference = [answer_alone(whole, _job(p))[0] for p in prompts]
    before = chunked.regrouped
    run = Run(chunked)
    run.submit(0, _job(prompts[0]))
    run.advance()
    run.submit(9, _job(LONG))
    run.submit(1, _job(prompts[1]))
    run.submit(2, _job(prompts[2]))
    run.advance()
    assert chunked.regrouped == before + 1  # the young request joined the burst's batch
    assert len({id(chunked.where[rid]) for rid in range(3)}) == 1
    run.finish()
    assert [run.text[rid] for rid in range(3)] == reference
    assert run.done[9][0] == "length"
    assert _idle(chunked)


def test_a_bad_schema_on_a_chunked_request_names_the_field(
    chunked: _Worker, whole: _Worker
) -> None:
    job = _job(LONG, json_schema=json.dumps({"type": "no-such-type"}), min_tokens=0)
    for worker in (chunked, whole):
        text, (reason, prompt, completion, error) = answer_alone(worker, job)
        assert (text, reason, completion) == ("", "error", 0)
        assert error[:2] == ("invalid_argument", "response_format.json_schema")
        assert "refused" in error[2]
        assert prompt == prompt_len(worker, job)
        assert _idle(worker)


def test_a_running_stream_never_waits_for_two_chunks_in_a_row(chunked: _Worker) -> None:
    run = Run(chunked)
    run.submit(0, _job(SHORT, tokens=300))
    run.advance()
    for rid in (1, 2, 3):  # three long prompts at once: read one after the other
        run.submit(rid, _job(f"{LONG} Part {rid}.", tokens=8))
    steps: list[str] = []
    while 0 in chunked.where and any(rid in chunked.where for rid in (1, 2, 3)):
        chunks, tokens = chunked.prefill_chunks, run.generated(0)
        run.advance()
        steps.append("chunk" if chunked.prefill_chunks > chunks else "other")
        if run.generated(0) > tokens:
            steps[-1] = "stream"
    assert steps.count("chunk") >= 3 * math.ceil(prompt_len(chunked, _job(LONG)) / CHUNK)
    pairs = list(itertools.pairwise(steps))
    assert ("chunk", "chunk") not in pairs
    run.finish()
    assert all(run.done[rid][0] == "length" for rid in range(4))
    assert _idle(chunked)
