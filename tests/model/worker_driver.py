"""Drive an engine worker step by step, as its own loop would, without the pipe: the
step-level tests of regrouping and chunked prefill count steps, never time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.engine._types import messages_from_job, tools_from_job
from edge_agent.engine._worker import _EngineLane, _GeneratorLane, _Out, _Worker


def step_worker(model: Path, **spec: Any) -> _Worker:
    """A worker on ``model`` with one intra-op thread and no spinning; ``spec`` overrides."""
    settings: dict[str, Any] = {
        "model_dir": str(model),
        "providers": ["cpu"],
        "provider_options": {},
        "intra_op_threads": 1,
        "thread_spinning": False,
        "lanes": 3,
        "max_batch_size": 16,
        "regroup_max_tokens": 16,
    } | spec
    return _Worker(None, settings)  # type: ignore[arg-type]  # the pipe is never used here


class Run:
    """Collects what the worker would have sent to the daemon, step by step."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.text: dict[int, str] = {}
        self.done: dict[int, tuple[str, int, int, Any]] = {}

    def submit(self, rid: int, job: dict[str, Any]) -> None:
        out = _Out()
        self.worker.submit(rid, job, out)
        self._collect(out)

    def advance(self) -> None:
        out = _Out()
        self.worker.advance(out)
        self._collect(out)

    def finish(self, limit: int = 3000) -> None:
        for _ in range(limit):
            if not self.worker.where and not self.worker.waiting:
                return
            self.advance()
        raise AssertionError("the worker did not finish its requests")

    def generated(self, rid: int) -> int:
        """Tokens request ``rid`` has generated so far, wherever it runs."""
        place = self.worker.where.get(rid)
        if isinstance(place, _GeneratorLane):
            return place.job.completion_tokens
        if isinstance(place, _EngineLane):
            return next(j.completion_tokens for j in place.jobs.values() if j.rid == rid)
        return self.done[rid][2]

    def _collect(self, out: _Out) -> None:
        for rid, text, _ in out.deltas:
            self.text[rid] = self.text.get(rid, "") + text
        for rid, reason, prompt, completion, error in out.done:
            self.done[rid] = (reason, prompt, completion, error)


def prompt_len(worker: _Worker, job: dict[str, Any]) -> int:
    """The prompt tokens the worker builds for ``job``."""
    return len(worker.prompts.build(messages_from_job(job), tools_from_job(job), ""))


def answer_alone(worker: _Worker, job: dict[str, Any]) -> tuple[str, tuple[str, int, int, Any]]:
    """``job`` run alone to its end: its text and its done record."""
    run = Run(worker)
    run.submit(1, job)
    run.finish()
    return run.text.get(1, ""), run.done[1]
