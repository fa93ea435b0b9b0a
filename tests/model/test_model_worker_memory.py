"""Memory that returns: after a burst of batched prefills the worker's resident memory goes
back to what it was at load (weights and the idle lanes), not to the burst's peak.

Two things used to keep it: a static og.Engine keeps its last batch's KV cache allocated
after the batch's requests closed, and onnxruntime's CPU arena keeps the peak of a step's
activations. Measured in this process on the V7 fixture served at its 32768-token context
(16 MiB of fp32 KV per sequence, a 131k-wide LM head for every prompt position).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tekken_fixture import tekken_model_dir
from worker_driver import Run, step_worker

from edge_agent._malloc import huge_page_malloc, release_free_heap
from edge_agent.engine._types import GenerationRequest, Message
from edge_agent.engine._worker import _EngineLane

MIB = 1024 * 1024
TEXT = "The archive keeps every record of the harbour, its ships, their cargo and crews. "


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key}")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tekken_model_dir(tmp_path_factory.mktemp("v7"))
    config = json.loads((folder / "genai_config.json").read_text())
    config["search"]["max_length"] = 32768  # the builder's default for Mistral Small 3
    (folder / "genai_config.json").write_text(json.dumps(config))
    return folder


def test_a_burst_of_batched_prefills_gives_its_memory_back(model: Path) -> None:
    worker = step_worker(model, prefill_chunk_tokens=0, prefix_cache_lanes=0, lanes=1)
    kv_per_sequence = worker.kv_per_token * worker.context_length
    assert kv_per_sequence == 16 * MIB
    gc.collect()
    release_free_heap()
    at_load = _status("VmRSS")
    for burst in range(2):
        run = Run(worker)
        for rid in range(4):  # arriving together: one static batch of four whole prompts
            job = GenerationRequest(
                messages=(Message("user", f"{burst} {rid} {TEXT * 12}"),), max_tokens=4
            ).to_job()
            run.submit(rid, job)
        run.advance()
        lane = worker.where[0]
        assert isinstance(lane, _EngineLane) and len(lane.jobs) == 4
        run.finish()
        assert all(run.done[rid][0] in ("stop", "length") for rid in range(4))
    # The bursts did allocate: four sequences' KV and [4, prompt, 131072] fp32 logits.
    assert _status("VmHWM") - at_load > 4 * kv_per_sequence + 4 * 200 * 131072 * 4
    gc.collect()
    release_free_heap()
    # Busy, the lane keeps its Engine (and the batch's KV, reused by the next batch)...
    assert _status("VmRSS") - at_load > 3 * kv_per_sequence
    worker.rest()  # what the worker's loop does when it has nothing left to do
    # ...idle, it gives it back: less than one sequence's KV cache is left of the bursts.
    assert _status("VmRSS") - at_load < kv_per_sequence


@pytest.mark.skipif(
    "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""),
    reason="this process already runs as the daemon's worker does",
)
def test_the_burst_gives_its_memory_back_on_huge_pages_too() -> None:
    """The daemon's worker mallocs on transparent huge pages (engine.huge_page_malloc): the
    same burst and rest, in a child started as the worker is."""
    here = Path(__file__)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{here}::test_a_burst_of_batched_prefills_gives_its_memory_back",
        ],
        cwd=here.parent.parent.parent,
        env=huge_page_malloc(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:]


def test_an_idle_worker_keeps_one_warm_single_sequence_lane(model: Path) -> None:
    worker = step_worker(
        model, prefill_chunk_tokens=0, prefix_cache_lanes=0, lanes=2, regroup_max_tokens=0
    )
    run = Run(worker)
    job = GenerationRequest(messages=(Message("user", "Hi"),), max_tokens=4).to_job()
    run.submit(0, job)  # a lone request: one sequence on the first lane
    run.advance()
    run.submit(1, job)
    run.submit(2, job)  # a pair arriving meanwhile, batched on the second lane
    run.finish()
    assert [lane.batch for lane in worker.lanes] == [1, 2]
    per_sequence = worker.kv_per_token * worker.context_length
    assert worker.stats()["lane_kv_bytes"] == 3 * per_sequence
    first, second = (lane.engine for lane in worker.lanes)
    worker.rest()
    assert worker.stats()["lane_kv_bytes"] == per_sequence
    # The lone request's Engine stays (the next lone one needs no new KV); the pair's goes.
    assert worker.lanes[0].engine is first and worker.lanes[1].engine is not second
    assert [lane.batch for lane in worker.lanes] == [1, 0]
