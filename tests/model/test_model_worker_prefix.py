"""Prefix reuse in the engine worker: a finished Generator lane keeps its KV cache, and the
next turn of the conversation continues from the longest common prefix.

Driven step by step in this process on the real demo model (and the Mistral V7 fixture):
what a client gets with reuse must equal what it gets without, and the worker's own
counters show what was read and what was reused.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tekken_fixture import tekken_model_dir
from worker_driver import Run, answer_alone, prompt_len, step_worker

from edge_agent.engine._types import GenerationRequest, Message, messages_from_job, tools_from_job
from edge_agent.engine._worker import _GeneratorLane, _Worker

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
CHUNK = 32
SYSTEM = " ".join(
    [
        "You answer questions about Python for the factory's engineers, briefly and exactly.",
        "Name the module a function comes from and show one line of code when it helps.",
    ]
    * 4
)
QUESTIONS = ["What does json.dumps do?", "And json.loads?", "How do I read a file?"]


def _worker(model: Path, lanes: int) -> _Worker:
    return step_worker(model, prefill_chunk_tokens=CHUNK, prefix_cache_lanes=lanes)


def _job(
    messages: list[Message], partition: str = "client-a/INTERNAL", **extra: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {"max_tokens": 16, "min_tokens": 0, "cache_partition": partition}
    return GenerationRequest(messages=tuple(messages), **(fields | extra)).to_job()


def _conversation(
    worker: _Worker, turns: int, partition: str = "client-a/INTERNAL"
) -> list[tuple[dict[str, Any], str, dict[str, int]]]:
    """Each turn's job, its answer, and the worker's counters it moved."""
    messages = [Message("system", SYSTEM)]
    out = []
    for question in QUESTIONS[:turns]:
        messages.append(Message("user", question))
        job = _job(messages, partition)
        before = worker.stats()
        text, done = answer_alone(worker, job)
        after = worker.stats()
        assert done[0] in ("stop", "length") and done[3] is None
        moved = {k: after[k] - before[k] for k in after if isinstance(after[k], int)}
        out.append((job, text, moved))
        messages.append(Message("assistant", text))
    return out


@pytest.fixture(scope="module")
def cached() -> _Worker:
    return _worker(DEMO, 3)


@pytest.fixture(scope="module")
def plain() -> _Worker:
    return _worker(DEMO, 0)


def _empty(worker: _Worker) -> None:
    worker.evict(-1)
    assert worker.stats()["cached_lanes"] == 0


def test_later_turns_read_only_their_new_tokens_and_answer_the_same(
    cached: _Worker, plain: _Worker
) -> None:
    _empty(cached)
    with_reuse = _conversation(cached, 3)
    without = _conversation(plain, 3)
    # What the client sees is the same, turn by turn (greedy: the answers are deterministic).
    assert [text for _, text, _ in with_reuse] == [text for _, text, _ in without]
    first_job, _, first = with_reuse[0]
    assert first["prefix_hits"] == 0 and first["prefix_misses"] == 1
    assert first["prompt_tokens_read"] == prompt_len(cached, first_job)
    for (job, _, moved), (previous, _, _) in zip(with_reuse[1:], with_reuse, strict=False):
        n = prompt_len(cached, job)
        assert moved["prefix_hits"] == 1 and moved["prefix_misses"] == 0
        reused = moved["prefix_reused_tokens"]
        # Everything the previous turn read was kept; only the rest was read.
        assert reused >= prompt_len(cached, previous)
        assert moved["prompt_tokens_read"] == n - reused
    # Without the cache every turn reads its whole prompt.
    for job, _, moved in without:
        assert moved["prompt_tokens_read"] == prompt_len(plain, job)
        assert moved["prefix_hits"] == moved["prefix_misses"] == 0
    assert cached.stats()["cached_lanes"] == 1  # the conversation's one lane, idle again
    assert plain.stats()["cached_lanes"] == 0


def test_the_mistral_v7_fixture_continues_a_cached_lane_to_the_same_distribution(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """On the V7 fixture's random weights the top two logits of a 131k vocabulary differ by
    ~1e-4, below the float rounding between a KV cache written one decode step at a time
    and the same positions read as a chunk: the greedy text may part at such a tie. So the
    proof here is the next-token distribution after the reused prefix against a fresh read."""
    folder = tekken_model_dir(tmp_path_factory.mktemp("v7"))
    worker = _worker(folder, 2)
    ((job, text, _),) = _conversation(worker, 1)
    follow = [*(Message(*m[:2]) for m in job["messages"]), Message("assistant", text)]
    follow.append(Message("user", QUESTIONS[1]))
    follow_job = _job(follow)
    run = Run(worker)
    run.submit(2, follow_job)
    lane = worker.where[2]
    assert isinstance(lane, _GeneratorLane) and lane.start >= prompt_len(worker, job)
    tokens = lane.job.tokens
    while lane.read + lane.chunk < len(tokens):
        run.advance()
    # The last chunk by hand, to read the logits before the step samples from them.
    lane.generator.append_tokens(tokens[lane.read :])
    lane.read = len(tokens)
    reused = np.asarray(lane.generator.get_logits())[0, -1].copy()
    run.finish()
    fresh = _fresh_logits(worker, follow_job)
    scale = float(np.abs(fresh).max())
    assert np.allclose(reused, fresh, rtol=0, atol=0.02 * scale)
    # The token it chose is, within that rounding, the fresh read's best one.
    assert fresh[int(reused.argmax())] >= fresh.max() - 0.02 * scale
    assert worker.prefix_hits == 1 and run.done[2][0] in ("stop", "length")


def _fresh_logits(worker: _Worker, job: dict[str, Any]) -> np.ndarray[Any, Any]:
    og = worker.og
    tokens = np.asarray(
        worker.prompts.build(messages_from_job(job), tools_from_job(job), ""), dtype=np.int32
    )
    params = og.GeneratorParams(worker.model)
    params.set_search_options(max_length=len(tokens) + 1, do_sample=False)
    generator = og.Generator(worker.model, params)
    for start in range(0, len(tokens), CHUNK):
        generator.append_tokens(tokens[start : start + CHUNK])
    logits: np.ndarray[Any, Any] = np.asarray(generator.get_logits())[0, -1]
    return logits


def test_another_partition_never_reuses(cached: _Worker) -> None:
    _empty(cached)
    ((job, text, _),) = _conversation(cached, 1, partition="client-a/INTERNAL")
    messages = [*(Message(*m[:2]) for m in job["messages"]), Message("assistant", text)]
    follow = [*messages, Message("user", QUESTIONS[1])]
    for partition in ("client-b/INTERNAL", "client-a/CONFIDENTIAL"):
        before = cached.stats()
        answer_alone(cached, _job(follow, partition))
        after = cached.stats()
        assert after["prefix_hits"] == before["prefix_hits"]
        assert after["prefix_misses"] == before["prefix_misses"] + 1
        assert after["prompt_tokens_read"] - before["prompt_tokens_read"] == prompt_len(
            cached, _job(follow)
        )
    # Requests without a partition (tools, tests, an older daemon) neither reuse nor count.
    before = cached.stats()
    answer_alone(cached, _job(follow, partition=""))
    assert cached.stats()["prefix_misses"] == before["prefix_misses"]
    assert cached.stats()["prefix_hits"] == before["prefix_hits"]
    # The owner's own next turn still finds its lane.
    before = cached.stats()
    answer_alone(cached, _job(follow))
    assert cached.stats()["prefix_hits"] == before["prefix_hits"] + 1


def test_a_cancelled_request_leaves_no_cached_lane(cached: _Worker) -> None:
    _empty(cached)
    run = Run(cached)
    run.submit(1, _job([Message("system", SYSTEM), Message("user", QUESTIONS[0])], max_tokens=40))
    lane = cached.where[1]
    assert isinstance(lane, _GeneratorLane)
    while lane.reading:
        run.advance()
    run.advance()
    cached.cancel(1)
    del lane
    run.finish()
    gc.collect()
    assert cached.stats()["cached_lanes"] == 0 and cached.stats()["cached_kv_bytes"] == 0
    assert not cached.generators and 1 not in run.done


def test_the_cache_is_bounded_and_evicts_least_recently_used(cached: _Worker) -> None:
    _empty(cached)
    evicted = cached.stats()["prefix_evictions"]
    kv = cached.kv_per_token * cached.context_length
    assert kv > 0
    capacity = cached.prefix.capacity
    # Different from the first tokens on: no conversation can continue another's lane.
    conversations = [f"Conversation {i}. {SYSTEM}" for i in range(capacity + 1)]
    hits = cached.stats()["prefix_hits"]
    for system in conversations:
        answer_alone(cached, _job([Message("system", system), Message("user", QUESTIONS[0])]))
    stats = cached.stats()
    assert stats["prefix_hits"] == hits
    assert stats["cached_lanes"] == capacity  # engine.prefix_cache_lanes
    # Each holds the whole context, allocated up front.
    assert stats["cached_kv_bytes"] == capacity * kv
    assert stats["prefix_evictions"] == evicted + 1
    # The oldest conversation was evicted: it misses; the newest hits.
    for system, hit in ((conversations[-1], 1), (conversations[0], 0)):
        before = cached.stats()["prefix_hits"]
        answer_alone(cached, _job([Message("system", system), Message("user", QUESTIONS[1])]))
        assert cached.stats()["prefix_hits"] == before + hit
    # Admission asks for room: one lane's bytes free exactly one lane.
    lanes = cached.stats()["cached_lanes"]
    cached.evict(1)
    assert cached.stats()["cached_lanes"] == lanes - 1
    cached.evict(-1)
    assert cached.stats()["cached_kv_bytes"] == 0


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_eviction_gives_the_kv_memory_back(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The V7 fixture served at its model's whole 32768-token context (the builder's default
    # search.max_length): 16 MiB of fp32 KV per cached lane, allocated when the lane is made.
    folder = tekken_model_dir(tmp_path_factory.mktemp("v7"))
    config = json.loads((folder / "genai_config.json").read_text())
    config["search"]["max_length"] = 32768
    (folder / "genai_config.json").write_text(json.dumps(config))
    worker = _worker(folder, 4)
    for i in range(4):
        system = f"Conversation {i}. {SYSTEM}"  # four conversations, four lanes
        answer_alone(worker, _job([Message("system", system), Message("user", "Hi")]))
    held = worker.stats()["cached_kv_bytes"]
    assert held == 4 * worker.kv_per_token * 32768
    gc.collect()
    before = _rss_bytes()
    worker.evict(-1)
    gc.collect()
    assert before - _rss_bytes() >= held * 3 // 4  # freed, and given back to the system


def test_guided_requests_neither_take_nor_leave_a_lane(cached: _Worker, plain: _Worker) -> None:
    _empty(cached)
    ((job, text, _),) = _conversation(cached, 1)
    follow = [*(Message(*m[:2]) for m in job["messages"]), Message("assistant", text)]
    follow.append(Message("user", "Answer as JSON."))
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})
    before = cached.stats()
    guided = answer_alone(cached, _job(follow, json_schema=schema, max_tokens=24))
    after = cached.stats()
    # The grammar's state would not rewind with the KV cache: no reuse, nothing counted.
    assert (after["prefix_hits"], after["prefix_misses"]) == (
        before["prefix_hits"],
        before["prefix_misses"],
    )
    assert after["prompt_tokens_read"] - before["prompt_tokens_read"] == prompt_len(
        cached, _job(follow)
    )
    assert after["cached_lanes"] == 1  # the conversation's lane is still there, untouched
    assert guided == answer_alone(plain, _job(follow, json_schema=schema, max_tokens=24))
    assert guided[0].lstrip().startswith("{")
    # Seeded sampling and min_tokens do not share lanes either; greedy still hits.
    for extra in ({"temperature": 0.8, "seed": 3}, {"min_tokens": 4}):
        hits = cached.stats()["prefix_hits"]
        answer_alone(cached, _job(follow, **extra))
        assert cached.stats()["prefix_hits"] == hits
    hits = cached.stats()["prefix_hits"]
    assert answer_alone(cached, _job(follow)) == answer_alone(plain, _job(follow))
    assert cached.stats()["prefix_hits"] == hits + 1
