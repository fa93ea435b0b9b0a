"""Regrouping in the engine worker: a burst's first request joins the burst's batch.

The worker is driven in this process, step by step as its loop drives it, on the real demo
model, so each test decides exactly where every request stands when the burst arrives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from worker_driver import Run, step_worker

from edge_agent.engine._types import GenerationRequest, Message
from edge_agent.engine._worker import _Worker

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
PROMPTS = [
    "What is a module?",
    "How do I open a file?",
    "What does json.dumps do?",
    "Explain a list comprehension.",
    "What is a generator?",
]
TOKENS = 24


def _worker(regroup_max_tokens: int = 16, max_batch_size: int = 16) -> _Worker:
    return step_worker(DEMO, regroup_max_tokens=regroup_max_tokens, max_batch_size=max_batch_size)


def _job(prompt: str, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"max_tokens": TOKENS, "min_tokens": TOKENS} | extra
    return GenerationRequest(messages=(Message("user", prompt),), **fields).to_job()


def _alone(worker: _Worker, prompts: list[str]) -> dict[int, str]:
    answers = {}
    for rid, prompt in enumerate(prompts, start=100):
        run = Run(worker)
        run.submit(rid, _job(prompt))
        run.finish()
        answers[rid - 100] = run.text[rid]
    return answers


def _prompt_tokens(worker: _Worker, prompt: str) -> int:
    text = worker.tokenizer.apply_chat_template(
        json.dumps([{"role": "user", "content": prompt}]), add_generation_prompt=True
    )
    return len(worker.tokenizer.encode(text))


def _idle(worker: _Worker) -> bool:
    return not any(lane.engine.has_pending_requests() for lane in worker.lanes)


@pytest.fixture(scope="module")
def worker() -> _Worker:
    return _worker()


def test_a_young_request_moves_into_the_burst_and_its_answer_is_unchanged(
    worker: _Worker,
) -> None:
    reference = _alone(worker, PROMPTS[:4])
    before = worker.regrouped
    run = Run(worker)
    run.submit(0, _job(PROMPTS[0]))
    run.advance()  # request 0 steps alone: its first token is out at once
    run.advance()
    assert run.text.get(0) is not None
    first_lane = worker.where[0]
    for rid in (1, 2, 3):  # the burst arrives while request 0 runs
        run.submit(rid, _job(PROMPTS[rid]))
    run.advance()
    assert worker.regrouped == before + 1
    assert not first_lane.busy and not first_lane.engine.has_pending_requests()  # type: ignore[union-attr]
    assert len({id(worker.where[rid]) for rid in range(4)}) == 1  # one batch of four
    run.finish()
    # Greedy text continues exactly; usage counts the prompt once and every token once.
    for rid in range(4):
        assert run.text[rid] == reference[rid]
        reason, prompt, completion, error = run.done[rid]
        assert (reason, completion, error) == ("length", TOKENS, None)
        assert prompt == _prompt_tokens(worker, PROMPTS[rid])
    assert _idle(worker)


def test_a_cancel_reaches_a_regrouped_request(worker: _Worker) -> None:
    run = Run(worker)
    run.submit(0, _job(PROMPTS[0]))
    run.advance()
    run.submit(1, _job(PROMPTS[1]))
    run.submit(2, _job(PROMPTS[2]))
    run.advance()
    worker.cancel(0)
    run.finish()
    assert 0 not in run.done  # a cancelled request ends silently; the daemon ended it
    assert run.done[1][0] == run.done[2][0] == "length"
    assert _idle(worker)
    assert worker.stats()["active"] == 0


@pytest.mark.parametrize(
    ("case", "regroup_max_tokens", "max_batch_size"),
    [
        ("too_many_tokens_generated", 16, 16),
        ("guided_answer", 16, 16),
        ("turned_off", 0, 16),
        ("batch_would_overflow", 16, 2),
        ("re_reading_costs_more_than_the_fresh_prompts", 16, 16),
    ],
)
def test_requests_that_must_not_move_stay(
    case: str, regroup_max_tokens: int, max_batch_size: int
) -> None:
    worker = _worker(regroup_max_tokens, max_batch_size)
    run = Run(worker)
    first: dict[str, Any] = {}
    if case == "guided_answer":
        first["json_schema"] = json.dumps(
            {"type": "object", "properties": {"a": {"type": "integer"}}}
        )
        first["min_tokens"] = 0
    if case == "re_reading_costs_more_than_the_fresh_prompts":
        run.submit(0, _job(" ".join(PROMPTS * 4)))
    else:
        run.submit(0, _job(PROMPTS[0], **first))
    steps = 20 if case == "too_many_tokens_generated" else 1
    for _ in range(steps):
        run.advance()
    first_lane = worker.where[0]
    newcomers = (1,) if case == "re_reading_costs_more_than_the_fresh_prompts" else (1, 2)
    for rid in newcomers:
        run.submit(rid, _job("Hi" if len(newcomers) == 1 else PROMPTS[rid]))
    run.advance()
    assert worker.regrouped == 0
    assert worker.where[0] is first_lane
    run.finish()
    assert _idle(worker)
