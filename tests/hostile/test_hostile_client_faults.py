"""Client faults against a real daemon: nothing stays behind in the engine, the loop or memory."""

from __future__ import annotations

import grpc
import pytest
from daemon_harness import RunningAgent
from hostile_common import LoopErrors, Tally, engine_idle
from hostile_faults import run_client_faults

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc


def test_cancelled_streams_leave_no_unhandled_error_on_the_loop(daemon: RunningAgent) -> None:
    # A cancelled stream is finalised by grpcio from another task; the auth wrapper's
    # context reset used to raise there ("Task exception was never retrieved").
    errors = LoopErrors(daemon)
    tally = Tally("cancel")
    try:
        with grpc.insecure_channel(daemon.target) as ch:
            stub = pb_grpc.InferenceStub(ch)
            request = pb.ChatRequest(
                messages=[pb.ChatMessage(role="user", content="def")], max_tokens=400
            )
            for _ in range(5):
                call = stub.Chat(request, timeout=60)
                next(call)
                call.cancel()
        assert engine_idle(daemon) is None
        errors.drain(tally)
    finally:
        errors.close()
    assert tally.clean, tally.summary()


def test_client_faults_bounded(daemon: RunningAgent) -> None:
    tally = Tally("client faults")
    run_client_faults(daemon, tally, 100)
    assert tally.cases == 100
    assert tally.clean, (tally.summary(), tally.figures)


@pytest.mark.slow
def test_client_faults_full(daemon: RunningAgent) -> None:
    tally = Tally("client faults")
    run_client_faults(daemon, tally, 1000, seed=11)
    assert tally.cases == 1000
    assert tally.clean, (tally.summary(), tally.figures)
