"""Escalation under client deadlines on a real daemon and a misbehaving loopback router.

The cloud may keep a request only as long as the deadline leaves for a local answer after
it: a router that stalls after its headers (first_token_timeout_s is 20 s) still ends in a
local answer before a 3 s deadline, and a deadline too short for both is served locally at
once. Whatever the router does and whenever the client gives up, no budget reservation
stays open and the audit record says whether the prompt reached the router.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from daemon_harness import RunningAgent, start_agent, stop_agent
from escalation_box import box_config, run_box, serving_router
from fake_router import Behaviour, FakeRouter, Hang, Reply, Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc
from edge_agent.audit import AuditLog, AuditRecord
from edge_agent.client import ChatChunk, ChatOptions, Client, DataClass, RoutePreference
from edge_agent.policy import (
    MIN_CLOUD_WINDOW_S,
    BudgetLedger,
    Budgets,
    ClientRule,
    EffectivePolicy,
    ModelPrice,
)

_ANY_SPEND = EffectivePolicy(
    version=1,
    escalation=True,
    max_cloud_class="public",
    budgets=Budgets(10**9, 10**9, 1e6, 1e6),
    models={"m": ModelPrice(1.0, 1.0)},
    default_model="m",
    clients={"*": ClientRule(True, "public", 1.0)},
)
_OPTS = ChatOptions(max_tokens=16, data_class=DataClass.PUBLIC, route=RoutePreference.LARGE_MODEL)


@pytest.fixture
def router() -> Iterator[FakeRouter]:
    yield from serving_router()


@pytest.fixture
def box(
    tmp_path: Path, router: FakeRouter, caplog: pytest.LogCaptureFixture
) -> Iterator[RunningAgent]:
    # Failures must not open the breaker here: every case should reach the router.
    yield from run_box(box_config(tmp_path, router, breaker_failure_threshold=1000), caplog)


def _ask(box: RunningAgent, timeout: float) -> tuple[list[ChatChunk], float]:
    started = time.monotonic()
    with Client(box.target) as client:
        chunks = list(client.chat([("user", "Hello?")], _OPTS, timeout=timeout))
    return chunks, time.monotonic() - started


def _settled(box: RunningAgent, after_seq: int) -> AuditRecord:
    """The request's audit record, once its cleanup (budget included) is done."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = box.agent.audit.records(after_seq=after_seq)
        if records:
            assert len(records) == 1, records
            return records[0]
        time.sleep(0.02)
    raise AssertionError("the request left no audit record")


def _reserved(box: RunningAgent) -> int:
    return box.agent.ledger.usage(datetime.now(UTC)).reserved


def test_a_deadline_shorter_than_the_first_token_timeout_still_gets_a_local_answer(
    box: RunningAgent, router: FakeRouter
) -> None:
    assert box.agent.config.cloud.first_token_timeout_s == 20
    router.on_chat(Reply(after=0, then="hang"))  # headers, then silence
    chunks, took = _ask(box, timeout=3.0)
    final = chunks[-1]
    assert took < 3.0
    assert final.provenance is not None
    assert final.provenance.decision_reason == "local.cloud_failed_before_first_token"
    assert final.usage is not None and final.usage.completion_tokens > 0
    assert len(router.chat_requests()) == 1
    record = _settled(box, 0)
    assert (record.destination, record.left_box) == ("cloud", 1)
    cloud, local = record.attempt_list()
    # The router accepted it (200 and headers): the provider may bill it.
    assert (cloud["outcome"], cloud["http_status"], cloud["usage"]) == (
        "timeout",
        200,
        "worst_case",
    )
    assert local["outcome"] == "ok"
    assert _reserved(box) == 0
    # The stall counted against the router: the next request does not wait for it again.
    router.on_chat(Reply(after=0, then="hang"))
    chunks, took = _ask(box, timeout=3.0)
    assert chunks[-1].provenance is not None
    assert chunks[-1].provenance.decision_reason == (
        "local.large_model_requested_but_connectivity_degraded"
    )
    assert len(router.chat_requests()) == 1
    # Once the route proves itself again, the cloud is used again.
    router.reset()
    box.call(box.agent.connectivity.probe_now())
    chunks, _ = _ask(box, timeout=3.0)
    assert chunks[-1].provenance is not None
    assert chunks[-1].provenance.destination == "cloud"


def test_a_deadline_too_short_for_cloud_and_local_is_served_locally_at_once(
    box: RunningAgent, router: FakeRouter
) -> None:
    router.on_chat(Hang())
    local_s = box.agent.chat_path.pace.answer_s(16)
    chunks, _ = _ask(box, timeout=local_s + MIN_CLOUD_WINDOW_S / 2)
    final = chunks[-1]
    assert final.provenance is not None
    assert final.provenance.decision_reason == (
        "local.large_model_requested_but_deadline_too_short"
    )
    assert router.chat_requests() == []
    record = box.agent.audit.tail(1)[-1]
    assert (record.destination, record.left_box) == ("local", 0)
    assert [a["destination"] for a in record.attempt_list()] == ["local"]


def _chat_call(channel: grpc.Channel, timeout: float, max_tokens: int, text: str) -> object:
    return pb_grpc.InferenceStub(channel).Chat(
        pb.ChatRequest(
            messages=[pb.ChatMessage(role="user", content=text)],
            max_tokens=max_tokens,
            data_class=pb.DATA_CLASS_PUBLIC,
            route=pb.ROUTE_PREFERENCE_LARGE_MODEL,
        ),
        timeout=timeout,
    )


def test_cancelled_and_deadline_aborted_calls_leave_no_reservation_after_a_clean_stop(
    tmp_path: Path, router: FakeRouter
) -> None:
    # The leak of the first release: the ledger release ran in ``asyncio.to_thread`` in a
    # ``finally`` while gRPC cancelled the handler at the deadline; a cancel that came
    # before the executor started the job dropped it, and the reservation stayed open.
    config = box_config(tmp_path, router)
    running, thread = start_agent(config)
    try:
        running.call(running.agent.connectivity.probe_now())
        context = running.agent.inference.context_length()
        for behaviour in (Reply(after=0, then="hang"), Hang(), Reply(after=2, then="hang")):
            router.on_chat(behaviour)
            with grpc.insecure_channel(running.target) as channel:
                call: Any = _chat_call(channel, 30, 16, "Hello?")
                threading.Timer(0.5, call.cancel).start()
                with pytest.raises(grpc.RpcError) as raised:
                    list(call)
                assert raised.value.code() == grpc.StatusCode.CANCELLED
        # Too long for the box (a hard need): the cloud has the whole deadline, and misses it.
        for _ in range(3):
            router.on_chat(Reply(after=0, then="hang"))
            with grpc.insecure_channel(running.target) as channel:
                call = _chat_call(channel, 1.0, context - 1, "Hello? " * 40)
                with pytest.raises(grpc.RpcError) as raised:
                    list(call)
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        stop_agent(running, thread)
    # Read the files after the daemon is gone: nothing may be left for a later cleanup.
    ledger = BudgetLedger(config.policy.budget_db)
    audit = AuditLog(config.audit.path)
    try:
        assert ledger.usage(datetime.now(UTC)).reserved == 0
        records = audit.tail(6)
        assert [r.destination for r in records] == ["cloud"] * 6
        outcomes = [r.attempt_list()[0]["outcome"] for r in records]
        assert outcomes[:3] == ["cancelled"] * 3
        assert set(outcomes[3:]) <= {"deadline", "timeout"}, outcomes
        assert all(r.cost_usd > 0 for r in records)  # accepted or unanswered: worst case
    finally:
        ledger.close()
        audit.close()


# A 402 opens the breaker for its maximum (tested on its own in test_e2e_escalation): here
# it would leave every later example local.
_FAILURES: dict[str, Behaviour | None] = {
    "ok": None,
    "refused": Status(503),
    "never_answers": Hang(),
    "silent_after_headers": Reply(after=0, then="hang"),
    "cut_mid_stream": Reply(after=2, then="cut"),
    "stalls_mid_stream": Reply(after=2, then="hang"),
    "drips_mid_stream": Reply(after=2, then="drip"),
    "error_in_stream": Reply(after=1, then="error"),
}


def _behaviour(point: str, delay: float) -> Behaviour:
    base = _FAILURES[point]
    if base is None:
        return Reply(first_byte_delay_s=delay, chunk_delay_s=delay / 4)
    if isinstance(base, Reply):
        return Reply(after=base.after, then=base.then, first_byte_delay_s=delay)
    return base


@settings(
    max_examples=14,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    deadline=st.sampled_from([0.8, 1.5, 2.5, 4.0]),
    delay=st.sampled_from([0.0, 0.4, 1.2, 3.0]),
    point=st.sampled_from(sorted(_FAILURES)),
)
def test_whatever_the_router_does_the_deadline_budget_and_audit_hold(
    box: RunningAgent, router: FakeRouter, deadline: float, delay: float, point: str
) -> None:
    router.reset()
    box.call(box.agent.connectivity.probe_now())  # a success: the route is online again
    router.on_chat(_behaviour(point, delay))
    seq = box.agent.audit.head()[0]
    sent = len(router.chat_requests())
    # The local model (demo, tens of ms) can always answer within these deadlines: an
    # answer must arrive, never DEADLINE_EXCEEDED.
    chunks, took = _ask(box, timeout=deadline)
    final = chunks[-1]
    assert took < deadline
    assert final.finish_reason and final.usage is not None and final.provenance is not None
    assert final.usage.completion_tokens > 0
    record = _settled(box, seq)
    reached = len(router.chat_requests()) - sent
    # The audit record matches what the router saw.
    assert reached in (0, 1)
    assert record.left_box == reached
    assert record.destination == ("cloud" if reached else "local")
    assert (record.fallback_reason or record.reason) == final.provenance.decision_reason
    legs = record.attempt_list()
    assert legs[-1]["destination"] == final.provenance.destination
    assert record.tokens_out == sum(leg["tokens_out"] for leg in legs)
    assert record.cost_usd == pytest.approx(sum(leg["cost_usd"] for leg in legs))
    assert _reserved(box) == 0


def test_a_reservation_left_by_a_crash_is_settled_at_worst_case_when_the_daemon_starts(
    tmp_path: Path, router: FakeRouter
) -> None:
    config = box_config(tmp_path, router)
    ledger = BudgetLedger(config.policy.budget_db)
    # What a daemon killed mid-call leaves: a reservation nobody will settle.
    ledger.reserve(_ANY_SPEND, client_id="anonymous", tokens=1234, usd=0.01, now=datetime.now(UTC))
    assert ledger.usage(datetime.now(UTC)).reserved == 1
    ledger.close()
    running, thread = start_agent(config)
    try:
        usage = running.agent.ledger.usage(datetime.now(UTC))
        assert (usage.reserved, usage.day_tokens) == (0, 1234)  # kept at its worst case
    finally:
        stop_agent(running, thread)
