"""Fuzzing the gRPC surface of a real daemon (bounded here; 10,000 cases under -m slow)."""

from __future__ import annotations

import grpc
import pytest
from daemon_harness import RunningAgent
from hostile_common import LoopErrors, Tally, admin_target, leaked_detail
from hostile_fuzz import fuzz_inference, fuzz_operator, fuzz_oversized, fuzz_raw

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc

# Full-run split of the 10,000 cases (scripts/hostile.py --full uses the same numbers).
FULL = {"inference": 4000, "operator": 2500, "raw": 3450, "oversized": 50}
BOUNDED = {"inference": 250, "operator": 60, "raw": 250, "oversized": 4}


def _run(daemon: RunningAgent, counts: dict[str, int]) -> list[Tally]:
    errors = LoopErrors(daemon)
    tallies = []
    try:
        for name, fuzz in (
            ("inference", fuzz_inference),
            ("operator", fuzz_operator),
            ("raw", fuzz_raw),
            ("oversized", fuzz_oversized),
        ):
            tally = Tally(f"fuzz {name}")
            fuzz(daemon, tally, counts[name])
            errors.drain(tally)
            tallies.append(tally)
    finally:
        errors.close()
    return tallies


def _ident(b: bytes) -> bytes:
    return b


def _send(ch: grpc.Channel, method: str, payload: bytes) -> None:
    if method.endswith("/Chat"):
        stream = ch.unary_stream(method, request_serializer=_ident, response_deserializer=_ident)
        list(stream(payload, timeout=30))
    else:
        unary = ch.unary_unary(method, request_serializer=_ident, response_deserializer=_ident)
        unary(payload, timeout=30)


@pytest.mark.parametrize(
    ("method", "where"),
    [
        ("/edge_agent.v1.Inference/Chat", "loopback"),
        ("/edge_agent.v1.Inference/GetStatus", "loopback"),
        ("/edge_agent.v1.Operator/PushPolicy", "admin"),
        ("/grpc.health.v1.Health/Check", "loopback"),
    ],
)
def test_malformed_bytes_are_invalid_argument_without_internals(
    daemon: RunningAgent, method: str, where: str
) -> None:
    # grpcio itself answers a failing deserializer with UNKNOWN and the exception's class.
    target = admin_target(daemon) if where == "admin" else daemon.target
    with grpc.insecure_channel(target) as ch:
        for payload in (b"\xff\xff\xff", b"\x0a\x05abc", b"\x0a"):
            with pytest.raises(grpc.RpcError) as info:
                _send(ch, method, payload)
            details = info.value.details() or ""
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
            assert details.startswith("request: "), details
            assert leaked_detail(details) is None, details
        stub = pb_grpc.InferenceStub(ch) if where == "loopback" else None
        if stub is not None:
            assert stub.GetStatus(pb.GetStatusRequest(), timeout=30).state


def test_fuzz_bounded(daemon: RunningAgent) -> None:
    tallies = _run(daemon, BOUNDED)
    assert sum(t.cases for t in tallies) >= sum(BOUNDED.values())
    for tally in tallies:
        assert tally.clean, tally.summary()


@pytest.mark.slow
def test_fuzz_full(daemon: RunningAgent) -> None:
    tallies = _run(daemon, FULL)
    assert sum(t.cases for t in tallies) >= 10_000
    for tally in tallies:
        assert tally.clean, tally.summary()
