"""Client faults on loopback: cancels at random points, deadlines that expire mid-generation,
channels closed under a stream, clients killed with SIGKILL (the kernel resets the TCP
connection), garbage and idle sockets. Afterwards nothing may be left behind: no request in
the engine, no task on the daemon's loop, memory back near its warm baseline.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import grpc
from daemon_harness import RunningAgent
from hostile_common import (
    MIB,
    NEVER,
    LoopErrors,
    Tally,
    engine_idle,
    health_ok,
    loop_tasks,
    rss_bytes,
    worker_pid,
)

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc

C = grpc.StatusCode

# Memory may settle above its warm baseline by this much: allocators (glibc arenas, grpc's
# slab pools, onnxruntime's arena in the worker) keep their high-water mark, and how many
# streams overlapped in the warm-up differs from the run. A leak of a stream's buffers or KV
# blocks (tens of KiB to MiB each) over hundreds of faults exceeds it.
RSS_TOLERANCE_BYTES = 24 * MIB
RSS_TOLERANCE_RATIO = 0.05

_CHILD = """
import sys, grpc
from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc
ch = grpc.insecure_channel(sys.argv[1])
req = pb.ChatRequest(messages=[pb.ChatMessage(role="user", content="def")],
                     max_tokens=400)
for _ in pb_grpc.InferenceStub(ch).Chat(req, timeout=120):
    print("token", flush=True)
"""


def _long(i: int) -> pb.ChatRequest:
    # The demo model answers "def" greedily with 400 tokens (it stops early on most prompts).
    text = "def" if i % 2 else "def " * (1 + i % 5)
    return pb.ChatRequest(messages=[pb.ChatMessage(role="user", content=text)], max_tokens=400)


def _expect(tally: Tally, what: str, code: grpc.StatusCode, allowed: set[grpc.StatusCode]) -> None:
    if code in NEVER or code not in allowed:
        tally.fail("wrong_status", f"{what}: {code.name}")


def _cancel_after(running: RunningAgent, rng: random.Random, tally: Tally, i: int) -> None:
    with grpc.insecure_channel(running.target) as ch:
        call = pb_grpc.InferenceStub(ch).Chat(_long(i), timeout=120)
        try:
            for _ in range(rng.randint(0, 3)):
                next(call)
        except StopIteration:
            pass  # the model said all it had to say
        except grpc.RpcError as exc:
            _expect(tally, "cancel", exc.code(), {C.RESOURCE_EXHAUSTED})
        call.cancel()


def _deadline(running: RunningAgent, rng: random.Random, tally: Tally, i: int) -> None:
    with grpc.insecure_channel(running.target) as ch:
        try:
            # A short answer may beat the deadline (the model may end early): that is fine.
            list(pb_grpc.InferenceStub(ch).Chat(_long(i), timeout=rng.uniform(0.001, 0.4)))
        except grpc.RpcError as exc:
            _expect(tally, "deadline", exc.code(), {C.DEADLINE_EXCEEDED, C.RESOURCE_EXHAUSTED})


def _close_channel(running: RunningAgent, rng: random.Random, tally: Tally, i: int) -> None:
    ch = grpc.insecure_channel(running.target)
    call = pb_grpc.InferenceStub(ch).Chat(_long(i), timeout=120)
    try:
        for _ in range(rng.randint(0, 2)):
            next(call)
    except StopIteration:
        pass
    except grpc.RpcError as exc:
        _expect(tally, "close", exc.code(), {C.RESOURCE_EXHAUSTED, C.CANCELLED})
    ch.close()  # the client vanishes with the stream open


def _kill_client(running: RunningAgent, rng: random.Random, tally: Tally, i: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, running.target], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for _ in range(rng.randint(1, 3)):
            if not proc.stdout.readline():
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


def _garbage_socket(running: RunningAgent, rng: random.Random, tally: Tally, i: int) -> None:
    host, port = running.target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        sock.sendall(preface[: rng.randint(0, len(preface))] + rng.randbytes(rng.randint(0, 300)))
        with contextlib.suppress(OSError):
            sock.recv(1024)


FAULTS = {
    "cancel": _cancel_after,
    "deadline": _deadline,
    "close": _close_channel,
    "sigkill": _kill_client,
    "garbage": _garbage_socket,
}
_WEIGHTS = {"cancel": 30, "deadline": 30, "close": 25, "sigkill": 3, "garbage": 12}


def _snapshot(running: RunningAgent) -> dict[str, int]:
    return {"daemon": rss_bytes(), "worker": rss_bytes(worker_pid(running))}


def run_client_faults(running: RunningAgent, tally: Tally, cases: int, seed: int = 7) -> None:
    """``cases`` faults after a warm-up; fills tally (cases, wrong_status, hung, leaks)."""
    rng = random.Random(seed)
    errors = LoopErrors(running)
    idle_sockets: list[socket.socket] = []
    try:
        host, port = running.target.rsplit(":", 1)
        # Idle connections held open all along (a slow-loris client) must starve nobody.
        idle_sockets = [socket.create_connection((host, int(port))) for _ in range(8)]
        names = list(_WEIGHTS)
        weights = [_WEIGHTS[n] for n in names]
        for warm in range(max(20, cases // 10)):
            FAULTS[names[warm % len(names)]](running, rng, tally, warm)
        _settle(running, tally, "after the warm-up")
        base, base_tasks = _snapshot(running), loop_tasks(running)
        done: dict[str, int] = dict.fromkeys(names, 0)
        for i in range(cases):
            name = rng.choices(names, weights)[0]
            FAULTS[name](running, rng, tally, i)
            done[name] += 1
            tally.cases += 1
        with grpc.insecure_channel(running.target) as ch:
            if not health_ok(ch):
                tally.fail("crashes", "health is not SERVING after the faults")
            answer = list(pb_grpc.InferenceStub(ch).Chat(_long(0), timeout=120))
            if answer[-1].usage.completion_tokens <= 0:
                tally.fail("crashes", "a full answer after the faults came out short")
        _settle(running, tally, "after the faults")
        after, tasks = _snapshot(running), loop_tasks(running)
        errors.drain(tally)
        tally.figures.update(
            faults=done,
            rss_daemon_mib=(round(base["daemon"] / MIB, 1), round(after["daemon"] / MIB, 1)),
            rss_worker_mib=(round(base["worker"] / MIB, 1), round(after["worker"] / MIB, 1)),
            loop_tasks=(base_tasks, tasks),
        )
        for part in ("daemon", "worker"):
            allowed = max(RSS_TOLERANCE_BYTES, base[part] * RSS_TOLERANCE_RATIO)
            if after[part] - base[part] > allowed:
                grown = (after[part] - base[part]) / MIB
                tally.fail("leaks", f"{part} RSS grew {grown:.1f} MiB over {cases} faults")
        if tasks > base_tasks:
            tally.fail("leaks", f"{tasks - base_tasks} more tasks on the daemon loop than before")
    finally:
        for sock in idle_sockets:
            sock.close()
        errors.close()


def _settle(running: RunningAgent, tally: Tally, when: str) -> None:
    busy: Any = engine_idle(running, timeout_s=30)
    if busy is not None:
        tally.fail("hung", f"the engine still holds requests {when}: {busy}")
    time.sleep(0.2)  # let grpcio finish tearing down the last calls
