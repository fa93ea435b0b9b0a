"""The engine supervisor: the daemon's side of local inference.

It starts the worker process, streams generations through it, restarts it with backoff
when it dies (in-flight streams end with UNAVAILABLE), and swaps models for bundle
activation: new requests go to the new worker while in-flight streams finish on the old.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_agent.config import EngineConfig
from edge_agent.engine._handle import WorkerHandle
from edge_agent.engine._liveness import LivenessWatch
from edge_agent.engine._types import (
    Delta,
    EngineInfo,
    EngineStatusView,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Message,
    ModelIdentity,
    Started,
)
from edge_agent.errors import (
    EdgeAgentError,
    EngineUnavailable,
    FailedPrecondition,
    InvalidArgument,
)
from edge_agent.pressure import EngineLoad

__all__ = ["EngineSupervisor", "identity_from_dir"]

_log = logging.getLogger(__name__)

# A worker that stayed up this long earns a fresh backoff.
_STABLE_AFTER_S = 60.0
_STOP_TIMEOUT_S = 10.0

StateListener = Callable[[str], None]


def identity_from_dir(model_dir: Path) -> ModelIdentity:
    """Name and version from the folder's bundle.json, or the folder name when it has none."""
    name, version = model_dir.name, "unversioned"
    architecture, quantization, kv_bytes, estimate = "unknown", "unknown", 0, 0
    try:
        meta = json.loads((model_dir / "bundle.json").read_text())
        name, version = str(meta["name"]), str(meta["version"])
        facts = meta.get("model", {})
        architecture = str(facts.get("architecture", architecture))
        quantization = str(facts.get("quantization", quantization))
        kv_bytes = int(facts.get("kv_bytes_per_token", 0))
        estimate = int(facts.get("memory_estimate_bytes", 0))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return ModelIdentity(name, version, model_dir, architecture, quantization, kv_bytes, estimate)


class _Stream:
    __slots__ = ("handle", "queue")

    def __init__(self, handle: WorkerHandle) -> None:
        self.handle = handle
        self.queue: asyncio.Queue[GenerationEvent | EdgeAgentError] = asyncio.Queue()


class EngineSupervisor:
    """Runs local generations in a supervised worker process."""

    def __init__(
        self,
        config: EngineConfig,
        model: ModelIdentity,
        *,
        on_state: StateListener | None = None,
        memory_room: Callable[[], int | None] = lambda: None,
    ) -> None:
        """``memory_room``: bytes a new model may take now beside the active one, its
        requests and the configured reserve (None: unknown); a trial load checks the
        bundle's memory estimate against it."""
        self._config = config
        self._model = model
        self._on_state = on_state
        self._memory_room = memory_room
        self._state = "stopped"
        self._active: WorkerHandle | None = None
        self._retiring: set[WorkerHandle] = set()
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._restarts = 0
        self._wedged = 0  # workers killed for answering nothing and computing nothing
        self._watch: LivenessWatch | None = None
        self._backoff = config.restart_backoff_s
        self._started_at = 0.0
        self._restart_task: asyncio.Task[None] | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._pongs: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._stats: dict[str, Any] = {}
        self._evicting = 0  # cached KV asked to be freed that the stats still count
        self._evict_seq = 0
        self._last_pong = 0.0
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()

    # -- properties -----------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def model(self) -> ModelIdentity:
        return self._model

    @property
    def info(self) -> EngineInfo | None:
        return self._active.info if self._active is not None else None

    @property
    def last_pong_age_s(self) -> float:
        return time.monotonic() - self._last_pong if self._last_pong else float("inf")

    @property
    def last_sign_of_life_age_s(self) -> float:
        """Since the worker last answered a ping or was seen computing (a long step)."""
        watch = self._watch
        if watch is None or self._active is None or watch.pid != self._active.pid:
            return self.last_pong_age_s
        return min(self.last_pong_age_s, time.monotonic() - watch.last_sign)

    def status(self) -> EngineStatusView:
        info = self.info
        return EngineStatusView(
            state=self._state,
            execution_provider=info.execution_provider if info else "",
            restarts=self._restarts,
            active_requests=len(self._streams),
            queued_requests=int(self._stats.get("waiting", 0)),
            lanes=info.lanes if info else self._config.lanes,
            max_batch_size=info.max_batch_size if info else self._config.max_batch_size,
            context_length=info.context_length if info else 0,
            intra_op_threads=info.intra_op_threads if info else 0,
            wedged_restarts=self._wedged,
            last_sign_of_life_age_s=self.last_sign_of_life_age_s if self._active else 0.0,
            worker_stats=dict(self._stats),
        )

    def load(self) -> EngineLoad:
        """What the pressure monitor samples about the engine's own work."""
        return EngineLoad(
            active_requests=len(self._streams),
            queued_requests=int(self._stats.get("waiting", 0)),
            kv_bytes_reclaimable=self.reclaimable_bytes(),
        )

    def prefill_buffer_bytes(self, prompt_tokens: int) -> int:
        """The transient logits of reading a prompt: the exported graph computes the LM head
        for every prompt position (``[batch, seq, vocab]`` fp32), so a request's share is the
        tokens one step reads (at most a chunk when chunked prefill is on) × vocab × 4 bytes
        (64 MiB for a 128-token chunk of Mistral Small 3's 131072 vocabulary). The other
        activations of a step are smaller (the MLP's are a quarter of it on that shape)."""
        info = self.info
        if info is None or info.vocab_size <= 0 or prompt_tokens <= 0:
            return 0
        chunk = self._config.prefill_chunk_tokens
        tokens = min(prompt_tokens, chunk) if chunk > 0 else prompt_tokens
        return tokens * info.vocab_size * 4

    def reclaimable_bytes(self) -> int:
        """KV cache of idle cached lanes (prefix reuse) the worker frees when asked."""
        if self._active is None:
            return 0
        return max(0, int(self._stats.get("cached_kv_bytes", 0)) - self._evicting)

    def reclaim(self, nbytes: int) -> int:
        """Ask the worker to free cached lanes until ``nbytes`` are freed (all when negative),
        least recently used first; returns the bytes it will free, at most. The worker reads
        the request before any later submit, so a request admitted on that room finds it."""
        handle = self._active
        available = self.reclaimable_bytes()
        if handle is None or available <= 0 or nbytes == 0:
            return 0
        handle.send(("evict", nbytes))
        freed = available if nbytes < 0 else min(nbytes, available)
        self._evicting += freed
        # Stats from a ping sent after this evict show the freed lanes already.
        self._evict_seq = next(self._ids)
        return freed

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            _log.info("engine %s", state)
            if self._on_state is not None:
                self._on_state(state)

    # -- lifecycle ------------------------------------------------------------------------

    def _spec(self, model_dir: Path) -> dict[str, Any]:
        c = self._config
        return {
            "model_dir": str(model_dir),
            "providers": list(c.providers),
            "provider_options": {k: dict(v) for k, v in c.provider_options.items()},
            "intra_op_threads": c.intra_op_threads,
            "thread_spinning": c.thread_spinning,
            "nice": c.worker_nice,
            "lanes": c.lanes,
            "max_batch_size": c.max_batch_size,
            "regroup_max_tokens": c.regroup_max_tokens,
            "prefill_chunk_tokens": c.prefill_chunk_tokens,
            "prefill_stall_target": c.prefill_stall_target,
            "prefix_cache_lanes": c.prefix_cache_lanes,
            "cpu_memory_arena": c.cpu_memory_arena,
            "huge_page_malloc": c.huge_page_malloc,
        }

    async def _launch(self, model_dir: Path) -> WorkerHandle:
        loop = asyncio.get_running_loop()
        handle = WorkerHandle(self._spec(model_dir), loop, self._on_message, self._on_exit)
        try:
            info = await asyncio.wait_for(asyncio.shield(handle.ready), self._config.load_timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            await handle.stop(_STOP_TIMEOUT_S)
            reason = "timed out loading the model" if isinstance(exc, TimeoutError) else str(exc)
            raise EngineUnavailable(f"the engine could not load the model: {reason}") from exc
        _log.info(
            "engine worker pid %s serves %s on %s (context %d, %s prompts, %d lanes × batch %d, "
            "%d threads, malloc on huge pages: %s)",
            info.pid, model_dir, info.execution_provider, info.context_length,
            info.prompt_format, info.lanes, info.max_batch_size, info.intra_op_threads,
            "yes" if handle.huge_pages else "no",
        )  # fmt: skip
        return handle

    def use_model(self, model_dir: Path) -> None:
        """Serve ``model_dir`` from the next start (the active bundle found at boot)."""
        if self._active is not None:
            raise RuntimeError("use switch_to() on a running engine")
        self._model = identity_from_dir(model_dir)

    async def start(self) -> None:
        """Start the worker and wait until the model serves; raises EngineUnavailable."""
        self._stopping = False
        self._set_state("starting")
        try:
            self._active = await self._launch(self._model.model_dir)
        except EngineUnavailable:
            self._set_state("stopped")
            raise
        self._started_at = time.monotonic()
        self._last_pong = time.monotonic()
        self._ping_task = asyncio.create_task(self._ping_loop(), name="engine-ping")
        self._set_state("ready")

    async def stop(self) -> None:
        """Stop the worker(s); in-flight streams end with UNAVAILABLE."""
        self._stopping = True
        for task in (self._restart_task, self._ping_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        handles = [h for h in (self._active, *self._retiring) if h is not None]
        self._active = None
        await asyncio.gather(*(h.stop(_STOP_TIMEOUT_S) for h in handles))
        self._fail_streams(None, EngineUnavailable("the engine stopped"))
        self._set_state("stopped")

    def _on_exit(self, handle: WorkerHandle) -> None:
        self._retiring.discard(handle)
        if handle.retiring or self._stopping or handle is not self._active:
            self._fail_streams(handle, EngineUnavailable("the engine stopped"))
            return
        _log.error(
            "engine worker pid %s died (exit code %s)", handle.pid, handle.process.returncode
        )
        self._active = None
        self._fail_streams(handle, EngineUnavailable("the engine restarted; retry the request"))
        self._set_state("restarting")
        self._restart_task = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        while not self._stopping:
            if time.monotonic() - self._started_at > _STABLE_AFTER_S:
                self._backoff = self._config.restart_backoff_s
            delay, self._backoff = (
                self._backoff,
                min(self._backoff * 2, self._config.restart_backoff_max_s),
            )
            await asyncio.sleep(delay)
            try:
                handle = await self._launch(self._model.model_dir)
            except EngineUnavailable as exc:
                _log.error("engine restart failed: %s", exc.message)
                continue
            self._active = handle
            self._restarts += 1
            self._started_at = time.monotonic()
            self._last_pong = time.monotonic()
            self._set_state("ready")
            return

    def _fail_streams(self, handle: WorkerHandle | None, error: EdgeAgentError) -> None:
        for rid, stream in list(self._streams.items()):
            if handle is None or stream.handle is handle:
                stream.queue.put_nowait(error)
                del self._streams[rid]

    # -- messages from workers ------------------------------------------------------------

    def _on_message(self, handle: WorkerHandle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "step":
            _, started, deltas, done = message
            streams = self._streams
            for rid, prompt_tokens in started:
                s = streams.get(rid)
                if s is not None:
                    s.queue.put_nowait(Started(prompt_tokens))
            for rid, text, calls in deltas:
                s = streams.get(rid)
                if s is not None:
                    s.queue.put_nowait(Delta(text, calls))
            for rid, reason, prompt_tokens, completion_tokens, error in done:
                s = streams.pop(rid, None)
                if s is None:
                    continue
                s.handle.streams.discard(rid)
                if error is not None:
                    s.queue.put_nowait(_worker_error(error))
                else:
                    s.queue.put_nowait(Finished(reason, prompt_tokens, completion_tokens))
            if handle.retiring and not handle.streams:
                # Held until done: the loop keeps only weak references to tasks.
                task = asyncio.get_running_loop().create_task(handle.stop(_STOP_TIMEOUT_S))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        elif kind == "pong":
            fut = self._pongs.pop(int(message[1]), None)
            if handle is self._active:
                self._stats = dict(message[2])
                self._last_pong = time.monotonic()
                if int(message[1]) > self._evict_seq:
                    self._evicting = 0
            if fut is not None and not fut.done():
                fut.set_result(dict(message[2]))

    async def _ping_loop(self) -> None:
        interval = self._config.ping_interval_s
        while True:
            await asyncio.sleep(interval)
            handle = self._active
            if handle is None or handle.pid is None:
                continue
            watch = self._watch
            if watch is None or watch.pid != handle.pid:
                watch = self._watch = LivenessWatch(handle.pid)
            try:
                await self.probe(timeout_s=interval)
            except EngineUnavailable:
                continue
            except TimeoutError:
                silent_s = watch.missed()
                if silent_s >= self._config.liveness_timeout_s and handle is self._active:
                    self._wedged += 1
                    _log.error(
                        "engine worker pid %s answered no ping and used no CPU for %.0f s; "
                        "killing it so that it restarts",
                        handle.pid,
                        silent_s,
                    )
                    handle.kill()  # its exit fails its streams and starts the restart
                continue
            watch.answered()

    async def probe(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Round-trip to the active worker; returns its stats (active, waiting, pending...)."""
        handle = self._active
        if handle is None:
            raise EngineUnavailable("the engine is not running")
        seq = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pongs[seq] = fut
        handle.send(("ping", seq))
        try:
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._pongs.pop(seq, None)

    # -- generation -----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream a generation; leaving the iteration early cancels it in the engine."""
        handle = self._active
        if handle is None or self._state != "ready":
            raise EngineUnavailable("the local engine is not ready")
        rid = next(self._ids)
        stream = _Stream(handle)
        self._streams[rid] = stream
        handle.streams.add(rid)
        handle.send(("submit", rid, request.to_job()))
        finished = False
        try:
            while True:
                for item in _drain(await stream.queue.get(), stream.queue):
                    if isinstance(item, EdgeAgentError):
                        finished = True
                        raise item
                    if isinstance(item, Finished):
                        finished = True
                        yield item
                        return
                    yield item
        finally:
            if not finished and self._streams.pop(rid, None) is not None:
                handle.streams.discard(rid)
                handle.send(("cancel", rid))

    # -- model swaps (bundle activation) --------------------------------------------------

    async def trial_load(self, model_dir: Path) -> None:
        """Load ``model_dir`` in a fresh worker and generate a few tokens; raise on failure."""
        self._check_fits(model_dir)
        handle = await self._launch(model_dir)
        try:
            await self._smoke(handle)
        finally:
            await handle.stop(_STOP_TIMEOUT_S)

    def _check_fits(self, model_dir: Path) -> None:
        """Refuse a bundle whose own memory estimate (weights, one sequence of KV at the served
        context, runtime overhead) exceeds what the box can give beside the active model."""
        estimate = identity_from_dir(model_dir).memory_estimate_bytes
        room = self._memory_room()
        if estimate <= 0 or room is None or estimate <= room:
            return
        mib = 1024 * 1024
        raise FailedPrecondition(
            f"the model needs about {-(-estimate // mib)} MiB (bundle.json "
            f"memory_estimate_bytes) and this box can give {max(room, 0) // mib} MiB beside the "
            "active model, its requests and the memory reserve: free memory, or ship a build "
            "with a smaller context (search.max_length) or smaller weights"
        )

    async def switch_to(self, model_dir: Path) -> None:
        """Serve ``model_dir`` from now on; in-flight streams finish on the old worker."""
        handle = await self._launch(model_dir)
        old, self._active = self._active, handle
        self._model = replace(identity_from_dir(model_dir), model_dir=model_dir)
        self._started_at = time.monotonic()
        self._set_state("ready")
        if old is not None:
            old.retiring = True
            if old.streams:
                self._retiring.add(old)
            else:
                await old.stop(_STOP_TIMEOUT_S)

    async def health_probe(self) -> None:
        """A short generation on the active model; raises when it does not answer."""
        if self._active is None:
            raise EngineUnavailable("the engine is not running")
        await self._smoke(None)

    async def _smoke(self, handle: WorkerHandle | None) -> None:
        request = GenerationRequest(messages=(Message("user", "Hello"),), max_tokens=4)
        if handle is None:
            async with asyncio.timeout(60):
                async for _ in self.generate(request):
                    pass
            return
        # A trial worker is not the active one: talk to it directly.
        rid = next(self._ids)
        stream = _Stream(handle)
        self._streams[rid] = stream
        handle.streams.add(rid)
        handle.send(("submit", rid, request.to_job()))
        try:
            async with asyncio.timeout(60):
                while True:
                    item = await stream.queue.get()
                    if isinstance(item, EdgeAgentError):
                        raise FailedPrecondition(f"trial generation failed: {item.message}")
                    if isinstance(item, Finished):
                        if item.completion_tokens < 1:
                            raise FailedPrecondition("trial generation produced no tokens")
                        return
        except TimeoutError as exc:
            raise FailedPrecondition("trial generation timed out") from exc
        finally:
            self._streams.pop(rid, None)


def _drain(
    first: GenerationEvent | EdgeAgentError, q: asyncio.Queue[GenerationEvent | EdgeAgentError]
) -> list[GenerationEvent | EdgeAgentError]:
    """``first`` plus whatever is already queued, consecutive deltas of one kind merged."""
    items = [first]
    while not q.empty():
        item = q.get_nowait()
        last = items[-1]
        if (
            isinstance(item, Delta)
            and isinstance(last, Delta)
            and item.tool_calls == last.tool_calls
        ):
            items[-1] = Delta(last.text + item.text, item.tool_calls)
        else:
            items.append(item)
    return items


def _worker_error(error: tuple[str, str, str]) -> EdgeAgentError:
    code, field, message = error
    if code == "invalid_argument":
        return InvalidArgument(field, message)
    return EngineUnavailable(message)
