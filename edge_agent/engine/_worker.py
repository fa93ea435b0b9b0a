"""The engine worker process: owns og.Model and its Engines, batches and steps requests.

``engine.run()`` holds the GIL for a whole step, so this runs in its own process; the daemon
stays responsive whatever happens here. Everything onnxruntime-genai is touched from the one
thread that runs :func:`worker_main` (the library requires a single owner thread).

Scheduling. On CPU an Engine batches statically: a request added to a running batch waits
for the whole batch. So the worker keeps several Engines ("lanes") over one shared model and
steps the busy ones in turn. A newcomer goes into a lane that has not started stepping yet
(so requests arriving together share one batch) or, failing that, an idle lane; only when
every lane is busy does it wait, and then for the first lane that frees. Seeded sampling
runs on a Generator of its own (the static Engine refuses per-turn seeds) stepped in the
same rotation.

Chunked prefill. A step of an Engine lane reads its requests' whole prompts, and every other
stream waits for that step. A prompt longer than ``engine.prefill_chunk_tokens`` therefore
runs on a Generator of its own and is read one chunk per turn of the rotation, between the
other lanes' steps; then it decodes there. The static Engine cannot do this itself: every
turn of a request generates at least one token that stays in its sequence, and a second
turn needs the request alone in its batch (docs/ARCHITECTURE.md "Chunked prefill"). Long
prompts are read one at a time, oldest first, in one place of the rotation, so a running
stream waits at most one chunk per turn whatever arrives. With ``engine.prefill_stall_target``
the chunk adapts: while other streams decode, it is sized from the worker's own running
estimates (median decode step, prefill time per token) so that reading it costs at most that
multiple of a decode step; alone, the prompt is read ``prefill_chunk_tokens`` at a time.

Regrouping. Requests of a burst reach the worker one by one: the first starts stepping
alone at once (its time to first token matters), the rest gather in a fresh lane, and the
two would then step as batches of 1 and n-1 for the whole answer. So right after a lane's
first steps, when a fresh lane is about to start, the young lane's requests move into it:
each is cancelled and begun again there from its prompt plus the tokens it has already
generated, so the fresh batch carries them all. A request moves at most once, only while it
has generated few tokens (``engine.regroup_max_tokens``) and only when re-reading it costs
no more than the fresh batch's own prompts.

Prefix reuse. A Generator lane that ends stays as an idle cached lane with its KV cache; a
later request of the same partition continues it from the longest common prefix
(engine/_prefix.py). Memory. An idle worker renews the Engines that held batches (a static
Engine keeps its last batch's KV) and trims the heap (``_Worker.rest``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent._malloc import release_free_heap
from edge_agent.engine._cpus import resolve_intra_op_threads
from edge_agent.engine._netseal import NetsealUnavailable, seal_network
from edge_agent.engine._prefix import CachedLane, PrefixCache, sampling_key
from edge_agent.engine._prompt import PromptError, load_prompt_builder
from edge_agent.engine._protocol import BlockingChannel
from edge_agent.engine._providers import ModelLoadError, load_model
from edge_agent.engine._stops import StopFilter
from edge_agent.engine._types import messages_from_job, tools_from_job
from edge_agent.pressure import (
    context_from_genai_config,
    kv_bytes_per_token_from_genai_config,
    read_genai_config,
)

__all__ = ["worker_main"]

_log = logging.getLogger("edge_agent.engine.worker")

# Adaptive prefill chunks (``engine.prefill_stall_target``): the smallest chunk, the first
# chunk beside decoding streams before any prefill was timed (time per token measured on a
# chunk includes the step's fixed cost, so cuts then shrink towards the size whose step
# takes the target; from below they would stay small), the decode steps whose median is
# "a decode step", and the weight of a new chunk's time per token in its moving average.
MIN_PREFILL_CHUNK = 2
FIRST_PREFILL_CHUNK = 8
DECODE_WINDOW = 9
PREFILL_EWMA = 0.3

_TOKEN = 1
_TURN_FINISHED = 2
_FAILED = 8

# Engine finish reasons → the API's finish_reason.
_FINISH = {
    "EOS": "stop",
    "STOP_STRING": "stop",
    "MAX_GENERATED_TOKENS": "length",
    "MAX_SESSION_TOKENS": "length",
    "CANCELLED": "cancelled",
    "FAILED": "error",
    "NONE": "stop",
}


@dataclass
class _Job:
    rid: int
    tokens: np.ndarray[Any, np.dtype[np.int32]]
    max_new: int
    job: dict[str, Any]
    stream: Any  # og.TokenizerStream
    stops: StopFilter
    completion_tokens: int = 0
    request: Any = None  # og.Request; the reference keeps it alive (a dropped Request closes)
    turn_id: int = 0
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)  # token ids of this answer so far
    regrouped: bool = False
    calls_token: int | None = None  # the format's tool-call control token ([TOOL_CALLS])
    calls: bool = False  # the model emitted it: what follows is the calls' JSON
    # Trailing spaces of assistant_prefix the prompt format dropped (Mistral V7 does): the
    # client already has them, so the same spaces are not sent again when the model restores them.
    skip_spaces: int = 0

    def take(self, token: int, out: _Out) -> None:
        """One generated token's text: answer text goes through the stop filter; after the
        tool-call token, the calls' JSON goes out as is (a stop string must not cut it)."""
        text = self.stream.decode(token)  # the stream must see every token, even this one
        if token == self.calls_token:
            if not self.calls:
                tail = self.stops.flush()  # answer text held back for a possible stop string
                if tail:
                    out.deltas.append((self.rid, tail, False))
                self.calls = True
            return
        if self.skip_spaces and text and not self.calls:
            kept = text.lstrip(" ")
            dropped = min(len(text) - len(kept), self.skip_spaces)
            # Only spaces the prefix lost; anything else ends the skipping.
            self.skip_spaces = 0 if kept or dropped < len(text) else self.skip_spaces - dropped
            text = text[dropped:]
        if not self.calls:
            text = self.stops.feed(text)
        if text:
            out.deltas.append((self.rid, text, self.calls))

    @property
    def min_new(self) -> int:
        return min(int(self.job.get("min_tokens") or 0), self.max_new)

    def resume_tokens(self) -> np.ndarray[Any, np.dtype[np.int32]]:
        """What a fresh turn must read to continue this answer where it stands."""
        if not self.generated:
            return self.tokens
        return np.concatenate([self.tokens, np.asarray(self.generated, dtype=np.int32)])

    def regroupable(self) -> bool:
        # Its lane keeps token ids only up to engine.regroup_max_tokens: holding all of them
        # is what makes an answer young enough to move. A guided answer cannot move: the
        # grammar's state would restart at the new turn.
        return (
            not self.regrouped
            and not self.cancelled
            and not self.stops.stopped
            and not self.job["json_schema"]
            and len(self.generated) == self.completion_tokens
            and self.completion_tokens < self.max_new
        )


@dataclass
class _Out:
    started: list[tuple[int, int]] = field(default_factory=list)
    deltas: list[tuple[int, str, bool]] = field(default_factory=list)
    done: list[tuple[int, str, int, int, tuple[str, str, str] | None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.started or self.deltas or self.done)

    def finish(self, job: _Job, reason: str, error: tuple[str, str, str] | None = None) -> None:
        tail = job.stops.flush()
        if tail:
            self.deltas.append((job.rid, tail, False))
        self.done.append((job.rid, reason, len(job.tokens), job.completion_tokens, error))


class _EngineLane:
    """One og.Engine over the shared model; a static batch while it steps."""

    def __init__(self, og: Any, model: Any, buffer_size: int, keep_tokens: int = 0) -> None:
        self._og = og
        self._model = model
        self._buffer_size = buffer_size
        self._keep_tokens = keep_tokens  # token ids kept per answer, for regrouping
        self.jobs: dict[int, _Job] = {}  # id(og.Request) → job
        self.stepping = False  # a batch has started; newcomers would wait for all of it
        self.batch = 0  # sequences the Engine holds KV for since its last batch (0: none)
        self.renew()

    def renew(self) -> None:
        """A fresh Engine: a static Engine keeps its last batch's KV cache allocated after its
        requests closed (bench model: 96 MiB per sequence of that batch, never given back);
        dropping it returns that memory. Making one costs ~10 µs, but its first batch then
        allocates that KV again (first token +16 ms on the real shape, +36 ms on the bench
        model): so only an idle worker renews (``_Worker.rest``)."""
        self.engine = self._og.Engine(self._model)
        self.buffer = self.engine.create_event_buffer(self._buffer_size)
        self.batch = 0

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def accepts(self, max_batch: int) -> bool:
        return not self.stepping and len(self.jobs) < max_batch

    def add(self, job: _Job) -> None:
        og = self._og
        request = self.engine.create_request()
        options = og.TurnOptions(request)
        # A regrouped job continues: only what is left of its budget counts in the new turn.
        options.set_max_generated_tokens(job.max_new - job.completion_tokens)
        spec = job.job
        if job.min_new > job.completion_tokens:
            options.set_min_generated_tokens(job.min_new - job.completion_tokens)
        temperature = float(spec["temperature"])
        options.set_temperature(temperature)
        if temperature > 0:
            options.set_do_sample(True)
            if spec["top_p"] is not None:
                options.set_top_p(float(spec["top_p"]))
            # Unset means "no cut" (the API's 0), as on the Generator path: left to the
            # model's search defaults (top_k = 1 in many configs) the Engine refuses sampling.
            options.set_top_k(int(spec["top_k"]) if spec["top_k"] is not None else 0)
        # Stop strings are matched here (StopFilter): the static Engine refuses them.
        if spec["json_schema"]:
            options.set_guidance("json_schema", spec["json_schema"])
        job.turn_id = request.begin_turn(job.resume_tokens(), options)
        job.request = request
        self.jobs[id(request)] = job

    def prompt_tokens(self) -> int:
        return sum(len(job.tokens) + len(job.generated) for job in self.jobs.values())

    def regroupable(self) -> bool:
        return (
            self.stepping
            and bool(self.jobs)
            and all(job.regroupable() for job in self.jobs.values())
        )

    def release(self) -> list[_Job]:
        """End every turn here without finishing the jobs, so they can begin again elsewhere."""
        jobs = list(self.jobs.values())
        for job in jobs:
            job.request.cancel_turn(job.turn_id)
            job.request.close()  # frees its KV blocks; the engine forgets it
            job.request = None
        self.jobs.clear()
        self.stepping = False
        return jobs

    def cancel(self, job: _Job) -> None:
        job.cancelled = True
        job.request.cancel_turn(job.turn_id)

    def step(self, out: _Out) -> None:
        if not self.stepping:
            self.batch = max(self.batch, len(self.jobs))
        self.stepping = True
        for event in self.engine.run(self.buffer):
            job = self.jobs.get(id(event.request))
            if job is None:
                continue
            flags = event.flags.value
            if flags & _TOKEN and not job.cancelled:
                job.completion_tokens += 1
                if job.completion_tokens <= self._keep_tokens:
                    job.generated.append(int(event.token))
                job.take(int(event.token), out)
                if job.stops.stopped and not flags & _TURN_FINISHED:
                    out.finish(job, "stop")
                    self.cancel(job)  # its last event comes later and only closes it
                    continue
            if flags & (_TURN_FINISHED | _FAILED):
                del self.jobs[id(event.request)]
                job.request.close()  # frees its KV blocks now
                if job.cancelled:
                    continue
                if job.stops.stopped:
                    out.finish(job, "stop")
                elif flags & _FAILED:
                    out.finish(job, "error", ("internal", "", "the engine failed this request"))
                else:
                    out.finish(job, _FINISH.get(event.finish_reason.name, "stop"))
        if not self.jobs:
            self.stepping = False


class _GeneratorLane:
    """One request on its own og.Generator, stepped in the lanes' rotation.

    Three kinds of request run here: seeded sampling (the static Engine refuses per-turn
    seeds), prompts longer than the chunk budget, whose prompt is read ``chunk`` tokens per
    step (an og.Generator gives the same continuation for a prompt appended in pieces as at
    once), and prompts that continue a cached lane (engine/_prefix.py).
    """

    def __init__(
        self,
        og: Any,
        model: Any,
        job: _Job,
        chunk: int,
        *,
        max_length: int = 0,
        reuse: tuple[CachedLane, int] | None = None,
        key: tuple[Any, ...] | None = None,
    ) -> None:
        """``max_length``: the KV cache to allocate (0: this job's prompt and answer);
        ``reuse``: a cached lane to continue and how many of its tokens to keep; ``key``:
        the sampling key under which the lane may be cached when it ends (None: never)."""
        self.job = job
        self.key = key
        self.chunk = chunk if chunk > 0 else len(job.tokens)
        self.done = False
        self.failed = False
        self.seq = 0  # its place in the rotation, given by the worker
        self.partition = ""  # the daemon's cache partition, when it may be cached
        if reuse is not None:
            cached, keep = reuse
            self.generator = cached.generator
            self.max_length = cached.max_length
            self.generator.rewind_to(keep)  # the KV beyond ``keep`` is never attended again
            self.start = self.read = keep  # prompt tokens already in the KV cache
            return
        spec = job.job
        params = og.GeneratorParams(model)
        self.max_length = max_length or len(job.tokens) + job.max_new
        options: dict[str, Any] = {"max_length": self.max_length}
        temperature = float(spec["temperature"])
        if temperature > 0:
            options["do_sample"] = True
            options["temperature"] = temperature
            if spec["seed"] is not None:
                options["random_seed"] = int(spec["seed"])
            if spec["top_p"] is not None:
                options["top_p"] = float(spec["top_p"])
            # Unset means "no cut", as on the Engine lanes.
            options["top_k"] = int(spec["top_k"]) if spec["top_k"] is not None else 0
        else:
            options["do_sample"] = False  # greedy, as the Engine lanes run temperature 0
        if job.min_new:
            options["min_length"] = len(job.tokens) + job.min_new
        params.set_search_options(**options)
        if spec["json_schema"]:
            params.set_guidance("json_schema", spec["json_schema"])  # a bad schema fails below
        self.generator = og.Generator(model, params)
        self.start = self.read = 0  # prompt tokens appended so far

    @property
    def chunked(self) -> bool:
        """Its prompt (what a cached lane did not hold) takes more than one step to read."""
        return len(self.job.tokens) - self.start > self.chunk

    @property
    def reading(self) -> bool:
        return self.read < len(self.job.tokens)

    def step(self, out: _Out, eos: frozenset[int], chunk: int = 0) -> None:
        """``chunk``: prompt tokens to read this step (0: the lane's own chunk)."""
        job, gen = self.job, self.generator
        try:
            if self.reading:
                end = min(self.read + (chunk or self.chunk), len(job.tokens))
                gen.append_tokens(job.tokens[self.read : end])  # runs the model on the chunk
                self.read = end
                if self.reading:
                    return
            # After the last chunk this only samples from the logits the append computed.
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
        except Exception as exc:
            _log.warning("the generator failed request %d: %s", job.rid, exc)
            self.done = self.failed = True
            out.finish(job, "error", ("internal", "", "the engine failed this request"))
            return
        job.completion_tokens += 1
        if token not in eos:
            job.take(token, out)
        if job.stops.stopped or token in eos:
            self.done = True
            out.finish(job, "stop")
        elif gen.is_done() or job.completion_tokens >= job.max_new:
            self.done = True
            out.finish(job, "length")


class _Worker:
    def __init__(self, conn: BlockingChannel, spec: dict[str, Any]) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.conn = conn
        self.spec = spec
        self.intra_op_threads = resolve_intra_op_threads(int(spec["intra_op_threads"]))
        loaded = load_model(
            og,
            Path(spec["model_dir"]),
            spec["providers"],
            spec["provider_options"],
            self.intra_op_threads,
            int(spec["max_batch_size"]),
            bool(spec["thread_spinning"]),
            bool(spec.get("cpu_memory_arena", False)),
        )
        self.model = loaded.model
        self.provider = loaded.provider
        self.skipped = loaded.skipped
        self.tokenizer = og.Tokenizer(self.model)
        self.prompts = load_prompt_builder(Path(spec["model_dir"]), self.tokenizer)
        config: dict[str, Any] = read_genai_config(Path(spec["model_dir"]))
        self.context_length = context_from_genai_config(config)
        self.vocab_size = int(config["model"].get("vocab_size", 0))
        eos = config["model"].get("eos_token_id", [])
        self.eos = frozenset(eos if isinstance(eos, list) else [eos])
        self.regroup_max_tokens = int(spec["regroup_max_tokens"])
        # Absent (an older daemon's spec): whole prompts, as before chunking existed.
        self.prefill_chunk = int(spec.get("prefill_chunk_tokens", 0))
        self.prefill_chunks = 0
        # Adaptive chunks: 0 keeps the fixed chunk; the estimates are measured on every step.
        self.stall_target = float(spec.get("prefill_stall_target", 0.0))
        self.decode_steps: deque[float] = deque(maxlen=DECODE_WINDOW)
        self.prefill_token_s = 0.0  # moving average; 0: no chunk measured yet
        self.prefill_chunk_size = 0  # the last chunk's cut (a last chunk reads what is left)
        self.prefill_shrunk = 0  # chunks cut under prefill_chunk_tokens
        self.prompt_tokens_read = 0  # prompt tokens run through the model (reused ones are not)
        self.prefix = PrefixCache(int(spec.get("prefix_cache_lanes", 0)))
        self.prefix_hits = self.prefix_misses = self.prefix_reused_tokens = 0
        try:
            # CPU keeps the KV cache in fp32, accelerators in fp16 (as admission counts it).
            element = 4 if self.provider == "cpu" else 2
            self.kv_per_token = kv_bytes_per_token_from_genai_config(config, element)
        except ValueError:
            self.kv_per_token = 0
        self.lanes = [
            _EngineLane(og, self.model, 256, self.regroup_max_tokens)
            for _ in range(int(spec["lanes"]))
        ]
        self.max_batch = int(self.lanes[0].engine.get_capabilities().configured_max_batch_size)
        self.max_batch = min(self.max_batch, int(spec["max_batch_size"])) or 1
        self.guidance_warmup_s = self._warm_guidance()
        self.regrouped = 0
        self.generators: list[_GeneratorLane] = []
        self.waiting: deque[_Job] = deque()
        self.where: dict[int, _EngineLane | _GeneratorLane | None] = {}
        self.turn: tuple[int, int] = (-1, -1)  # the rotation place stepped last
        self.arrivals = 0
        self.steps = 0
        self.running = True

    def _warm_guidance(self) -> float | None:
        """The first JSON-schema request of a process builds the guidance engine's view of
        the vocabulary (1.75 s for a 131k Tekken vocabulary on 2 cores, ~0.01 s afterwards):
        paid here, before the worker says ready, not by a client. None: guidance unavailable."""
        og, started = self.og, time.perf_counter()
        prompt = np.asarray([self.tokenizer.encode("{")], dtype=np.int32)
        try:
            params = og.GeneratorParams(self.model)
            params.set_search_options(max_length=prompt.shape[1] + 1)
            params.set_guidance("json_schema", '{"type": "object"}')
            generator = og.Generator(self.model, params)
            generator.append_tokens(prompt)
            generator.generate_next_token()
        except Exception as exc:
            _log.warning("JSON-schema guidance did not warm up: %s", exc)
            return None
        return time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "skipped": self.skipped,
            "context_length": self.context_length,
            "prompt_format": self.prompts.format,
            "guidance_warmup_s": self.guidance_warmup_s,
            "max_batch_size": self.max_batch,
            "lanes": len(self.lanes),
            "intra_op_threads": self.intra_op_threads,
            "vocab_size": self.vocab_size,
            "pid": os.getpid(),
        }

    def stats(self) -> dict[str, Any]:
        return {
            "active": sum(len(lane.jobs) for lane in self.lanes) + len(self.generators),
            "waiting": len(self.waiting),
            "pending_in_engines": sum(lane.engine.has_pending_requests() for lane in self.lanes),
            "busy_lanes": sum(lane.busy for lane in self.lanes),
            "steps": self.steps,
            "regrouped": self.regrouped,
            "prefilling": sum(g.chunked and g.reading for g in self.generators),
            "prefill_chunks": self.prefill_chunks,
            "prefill_chunk_size": self.prefill_chunk_size,
            "prefill_shrunk": self.prefill_shrunk,
            "prompt_tokens_read": self.prompt_tokens_read,
            "prefix_hits": self.prefix_hits,
            "prefix_misses": self.prefix_misses,
            "prefix_reused_tokens": self.prefix_reused_tokens,
            "prefix_evictions": self.prefix.evicted,
            "cached_lanes": len(self.prefix),
            "cached_kv_bytes": self.prefix.kv_bytes,
            # What the Engine lanes keep allocated: their batches' KV, or the warm lane's at rest.
            "lane_kv_bytes": sum(lane.batch for lane in self.lanes)
            * self.kv_per_token
            * self.context_length,
        }

    # -- commands -------------------------------------------------------------------------

    def handle(self, message: tuple[Any, ...], out: _Out) -> None:
        kind = message[0]
        if kind == "submit":
            self.submit(int(message[1]), message[2], out)
        elif kind == "cancel":
            self.cancel(int(message[1]))
        elif kind == "ping":
            self.conn.send(("pong", message[1], self.stats()))
        elif kind == "evict":
            self.evict(int(message[1]))
        elif kind == "shutdown":
            self.running = False

    def submit(self, rid: int, spec: dict[str, Any], out: _Out) -> None:
        try:
            ids = self.prompts.build(
                messages_from_job(spec),
                tools_from_job(spec),
                str(spec.get("assistant_prefix") or ""),
            )
        except PromptError as exc:
            out.done.append((rid, "error", 0, 0, ("invalid_argument", exc.field, exc.message)))
            return
        tokens = np.asarray(ids, dtype=np.int32)
        room = self.context_length - len(tokens)
        if room < 1:
            out.done.append(
                (
                    rid,
                    "error",
                    len(tokens),
                    0,
                    (
                        "invalid_argument",
                        "messages",
                        f"the prompt is {len(tokens)} tokens; "
                        f"the model's context is {self.context_length}",
                    ),
                )
            )
            return
        max_new = room if spec["max_tokens"] is None else min(int(spec["max_tokens"]), room)
        job = _Job(
            rid, tokens, max_new, spec, self.tokenizer.create_stream(), StopFilter(spec["stop"])
        )
        job.calls_token = self.prompts.tool_calls_token
        prefix = str(spec.get("assistant_prefix") or "")
        if self.prompts.strips_prefix_spaces:
            job.skip_spaces = len(prefix) - len(prefix.rstrip(" "))
        out.started.append((rid, len(tokens)))
        # Reuse only within the daemon's partition (client and data class) and sampling key.
        partition = str(spec.get("cache_partition") or "")
        key = sampling_key(spec) if self.prefix.capacity > 0 and partition else None
        reuse = None
        if key is not None:
            reuse = self.prefix.take(partition, key, tokens, len(tokens) + max_new)
            if reuse is None:
                self.prefix_misses += 1
            else:
                self.prefix_hits += 1
                self.prefix_reused_tokens += reuse[1]
        seeded = spec["seed"] is not None and float(spec["temperature"]) > 0
        if reuse is not None or seeded or 0 < self.prefill_chunk < len(tokens):
            try:
                lane = _GeneratorLane(
                    self.og,
                    self.model,
                    job,
                    self.prefill_chunk,
                    # A lane that may be cached holds the whole context: any later turn fits.
                    max_length=self.context_length if key is not None else 0,
                    reuse=reuse,
                    key=key,
                )
            except Exception as exc:
                # Building the grammar is what fails on a bad schema; anything else is ours.
                if spec["json_schema"]:
                    error = (
                        "invalid_argument",
                        "response_format.json_schema",
                        "the JSON schema was refused by the guidance engine",
                    )
                else:
                    _log.warning("no generator for request %d: %s", rid, exc)
                    error = ("internal", "", "the engine failed this request")
                out.finish(job, "error", error)
                return
            lane.partition = partition
            self.arrivals += 1
            lane.seq = self.arrivals
            self.generators.append(lane)
            self.where[rid] = lane
            return
        self.where[rid] = None
        self.waiting.append(job)

    def cancel(self, rid: int) -> None:
        if rid not in self.where:
            return
        place = self.where.pop(rid)
        if place is None:
            self.waiting = deque(j for j in self.waiting if j.rid != rid)
        elif isinstance(place, _GeneratorLane):
            self.generators.remove(place)
        else:
            for job in place.jobs.values():
                if job.rid == rid:
                    place.cancel(job)
                    break

    def evict(self, nbytes: int) -> None:
        """Free cached lanes, least recently used first, until ``nbytes`` (all when
        negative): admission or memory pressure needs the room."""
        if self.prefix.evict(nbytes):
            release_free_heap()

    def dispatch(self, out: _Out) -> None:
        while self.waiting:
            lane = next((ln for ln in self.lanes if ln.busy and ln.accepts(self.max_batch)), None)
            lane = lane or next((ln for ln in self.lanes if not ln.busy), None)
            if lane is None:
                return
            job = self.waiting.popleft()
            self.prompt_tokens_read += len(job.tokens)
            try:
                lane.add(job)
            except Exception as exc:
                _log.warning("the engine refused request %d: %s", job.rid, exc)
                self.where.pop(job.rid, None)
                field_name = "response_format.json_schema" if job.job["json_schema"] else "messages"
                out.finish(
                    job,
                    "error",
                    ("invalid_argument", field_name, "the engine refused this request"),
                )
                continue
            self.where[job.rid] = lane

    def regroup(self, out: _Out) -> None:
        """Move young small batches into the fresh lane that is about to start."""
        if self.regroup_max_tokens <= 0:
            return
        fresh = next((ln for ln in self.lanes if ln.busy and not ln.stepping), None)
        if fresh is None:
            return
        budget = fresh.prompt_tokens()  # re-reading may at most double the fresh prefill
        for lane in self.lanes:
            if lane is fresh or not lane.regroupable():
                continue
            if len(lane.jobs) + len(fresh.jobs) > self.max_batch:
                continue
            cost = lane.prompt_tokens()
            if cost > budget:
                continue
            budget -= cost
            self.prompt_tokens_read += cost  # read again in the fresh lane
            for job in lane.release():
                job.regrouped = True
                try:
                    fresh.add(job)
                except Exception as exc:
                    _log.warning("the engine refused regrouped request %d: %s", job.rid, exc)
                    self.where.pop(job.rid, None)
                    out.finish(job, "error", ("internal", "", "the engine failed this request"))
                    continue
                self.where[job.rid] = fresh
                self.regrouped += 1

    def rest(self) -> None:
        """Nothing to do: give back what the last burst left. Every Engine lane that held a
        batch gets a fresh Engine (its old one kept the batch's KV cache), except one that
        served a single sequence (what the next lone request would allocate again: an idle
        box answers it as fast as before); and glibc's freed heap pages (fragments of the
        steps' buffers: 146 MiB after ten conversations on the bench model, 9 ms to trim)."""
        warm = next((lane for lane in self.lanes if lane.batch == 1), None)
        for lane in self.lanes:
            if lane.batch and lane is not warm and not lane.busy:
                lane.renew()
        gc.collect()
        release_free_heap()

    # -- the loop -------------------------------------------------------------------------

    def _runnable(self) -> list[tuple[tuple[int, int], Callable[[_Out], None]]]:
        """What may step now, each under its place in the rotation: the lanes, then the
        generators in arrival order, then one place for reading a long prompt's chunk."""
        steps: list[tuple[tuple[int, int], Callable[[_Out], None]]] = [
            ((0, i), lane.step) for i, lane in enumerate(self.lanes) if lane.busy
        ]
        steps.extend(
            ((1, g.seq), functools.partial(self._step_generator, g))
            for g in self.generators
            if not (g.chunked and g.reading)
        )
        # Long prompts are read one at a time, oldest first, in a place of their own: however
        # many arrive, a running stream waits for at most one chunk per turn of the rotation.
        reading = next((g for g in self.generators if g.chunked and g.reading), None)
        if reading is not None:
            steps.append(((2, 0), functools.partial(self._step_generator, reading)))
        return steps

    def _step_generator(self, lane: _GeneratorLane, out: _Out) -> None:
        if not (lane.reading and lane.chunked):
            read = lane.read
            lane.step(out, self.eos)
            self.prompt_tokens_read += lane.read - read
            return
        chunk = self._chunk_budget(lane)
        self.prefill_chunks += 1
        self.prefill_chunk_size = chunk
        self.prefill_shrunk += chunk < lane.chunk
        read, started = lane.read, time.perf_counter()
        lane.step(out, self.eos, chunk)
        tokens = lane.read - read
        self.prompt_tokens_read += tokens
        if tokens > 0:
            per = (time.perf_counter() - started) / tokens
            old = self.prefill_token_s
            self.prefill_token_s = per if old <= 0 else old + PREFILL_EWMA * (per - old)

    def _others_decoding(self, reading: _GeneratorLane) -> bool:
        return any(lane.busy for lane in self.lanes) or any(
            g is not reading and not (g.chunked and g.reading) for g in self.generators
        )

    def _chunk_budget(self, lane: _GeneratorLane) -> int:
        """Prompt tokens the next chunk reads: the lane's whole chunk when nothing else
        decodes (or the budget is off), else as many as take ``stall_target`` decode steps."""
        if self.stall_target <= 0 or not self._others_decoding(lane):
            return lane.chunk
        floor = min(MIN_PREFILL_CHUNK, lane.chunk)
        if self.prefill_token_s <= 0 or not self.decode_steps:
            return min(FIRST_PREFILL_CHUNK, lane.chunk)  # a small chunk times the prefill
        step = statistics.median(self.decode_steps)
        return max(floor, min(lane.chunk, int(self.stall_target * step / self.prefill_token_s)))

    def _keep(self, lane: _GeneratorLane) -> None:
        """A finished lane that may be cached becomes an idle cached lane."""
        if lane.key is None or lane.failed or self.prefix.capacity <= 0:
            return
        cached = CachedLane(
            lane.generator,
            np.array(lane.generator.get_sequence(0), dtype=np.int32),
            lane.partition,
            lane.key,
            lane.max_length,
            self.kv_per_token * lane.max_length,  # the whole buffer is allocated up front
        )
        self.prefix.put(cached)

    def advance(self, out: _Out) -> None:
        """Place what waits, then run one step of the next busy lane in the rotation."""
        self.dispatch(out)
        self.regroup(out)
        runnable = self._runnable()
        if runnable:
            # The next after the last one stepped, even when places came or went since: a
            # plain counter modulo a changing length can step one place twice in a row.
            place, step = next(((k, f) for k, f in runnable if k > self.turn), runnable[0])
            started = time.perf_counter()
            step(out)
            if place[0] != 2:  # a decode step (a median: the odd step that reads a prompt is out)
                self.decode_steps.append(time.perf_counter() - started)
            self.turn = place
            self.steps += 1
            for job_rid in [rid for rid, *_ in out.done]:
                self.where.pop(job_rid, None)
            for lane in self.generators:
                if lane.done:
                    self._keep(lane)
            self.generators = [g for g in self.generators if not g.done]

    def run(self) -> None:
        busy_before = False
        while self.running:
            out = _Out()
            idle = (
                not self.waiting and not self.generators and not any(ln.busy for ln in self.lanes)
            )
            if idle and busy_before:
                self.rest()
            busy_before = not idle
            # Block only when there is nothing to step; otherwise take what has arrived.
            if self.conn.poll(None if idle else 0):
                while True:
                    self.handle(self.conn.recv(), out)
                    if not self.running or not self.conn.poll(0):
                        break
            if not self.running:
                break
            self.advance(out)
            if out:
                self.conn.send(("step", out.started, out.deltas, out.done))


def _lower_priority(nice: int) -> None:
    """Be nicer than the daemon, so health checks and the watchdog win the CPU.

    Raising one's own nice value needs no capability, but a seccomp filter may refuse the
    call (systemd's @resources group): serving at the daemon's priority beats not serving.
    """
    if nice <= 0:
        return
    try:
        os.nice(nice)
    except OSError as exc:
        logging.getLogger(__name__).warning(
            "engine worker: cannot lower its priority by %d (%s); running at the daemon's",
            nice,
            exc.strerror or exc,
        )


def _seal_off_network() -> None:
    """Before onnxruntime loads: no IP socket, so no telemetry can leave (engine/_netseal.py)."""
    try:
        seal_network()
    except NetsealUnavailable as exc:
        logging.getLogger(__name__).warning(
            "engine worker: cannot seal itself off the network (%s); onnxruntime telemetry "
            "stays off by environment only",
            exc.strerror,
        )


def worker_main(conn: BlockingChannel) -> None:
    """Serve the daemon over ``conn``; the first message is ("spec", settings)."""
    # The daemon handles Ctrl-C and SIGTERM and shuts the worker down over the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    first = conn.recv()
    if first[0] != "spec":
        return
    spec: dict[str, Any] = first[1]
    _lower_priority(int(spec.get("nice", 0)))
    _seal_off_network()
    try:
        worker = _Worker(conn, spec)
    except ModelLoadError as exc:
        conn.send(("load_failed", str(exc)))
        return
    except Exception as exc:
        conn.send(("load_failed", f"{type(exc).__name__}: {str(exc)[:300]}"))
        return
    # Nothing loaded so far dies: keep full collections from walking it between steps.
    gc.collect()
    gc.freeze()
    release_free_heap()  # what loading parsed and dropped (tokenizer JSON, graph protos)
    conn.send(("ready", worker.info()))
    # EOF or a broken pipe: the daemon went away and nothing is left to serve.
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):
        worker.run()


if __name__ == "__main__":
    import sys

    from edge_agent._offline import disable_phone_home

    # Also when started by hand: onnxruntime is imported lazily, after this.
    disable_phone_home()
    worker_main(BlockingChannel(socket.socket(fileno=int(sys.argv[1]))))
