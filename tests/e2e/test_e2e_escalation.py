"""The whole escalation path on a real daemon: signed policy, sealed token, router stand-in.

Public data under a LARGE_MODEL request goes to the cloud (provenance says so, the budget
and the audit log record it); restricted data never leaves; a failing router falls back to
the local model; the audit record tells what happened to each leg and agrees with the
client's provenance; account and model states (402, 429, model_not_supported) show as such
in status and metrics; the CLI can ask for the cloud; the token appears in no log line.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from daemon_harness import RunningAgent
from escalation_box import TOKEN, box_config, run_box, serving_router
from fake_router import DEFAULT_MODEL, FakeRouter, Reply, Status

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent.audit import AuditRecord
from edge_agent.cli import main as cli_main
from edge_agent.client import ChatChunk, ChatOptions, Client, DataClass, RoutePreference


@pytest.fixture
def router() -> Iterator[FakeRouter]:
    yield from serving_router()


@pytest.fixture
def box(
    tmp_path: Path, router: FakeRouter, caplog: pytest.LogCaptureFixture
) -> Iterator[RunningAgent]:
    yield from run_box(box_config(tmp_path, router), caplog)


def _ask(box: RunningAgent, data_class: DataClass, text: str = "Hello?") -> list[ChatChunk]:
    opts = ChatOptions(max_tokens=16, data_class=data_class, route=RoutePreference.LARGE_MODEL)
    with Client(box.target) as client:
        return list(client.chat([("user", text)], opts, timeout=60))


def test_public_data_escalates_to_the_cloud_and_is_audited(
    box: RunningAgent, router: FakeRouter
) -> None:
    chunks = _ask(box, DataClass.PUBLIC)
    final = chunks[-1]
    assert final.provenance is not None
    assert final.provenance.destination == "cloud"
    assert final.provenance.decision_reason == "cloud.large_model_requested"
    assert final.provenance.cloud_provider
    assert "".join(c.delta for c in chunks) == "Hello from the cloud."
    assert len(router.chat_requests()) == 1
    sent = router.chat_requests()[0]
    assert sent.headers.get("authorization") == f"Bearer {TOKEN}"
    records = box.agent.audit.tail(5)
    assert records[-1].destination == "cloud"
    assert records[-1].data_class == "public"
    assert records[-1].tokens_out > 0
    assert records[-1].prompt is None
    assert box.agent.audit.verify().ok
    usage = box.agent.ledger.usage(datetime.now(UTC))
    assert usage.day_tokens > 0


def test_restricted_data_never_leaves_the_box(box: RunningAgent, router: FakeRouter) -> None:
    final = _ask(box, DataClass.RESTRICTED, "Patient 4711 has a fever.")[-1]
    assert final.provenance is not None
    assert final.provenance.destination == "local"
    assert final.provenance.decision_reason.startswith("local.large_model_requested_but_")
    assert router.chat_requests() == []
    assert box.agent.audit.tail(1)[-1].destination == "local"


def test_router_failure_before_the_first_token_falls_back_to_local(
    box: RunningAgent, router: FakeRouter
) -> None:
    router.on_chat(Status(503))
    chunks = _ask(box, DataClass.PUBLIC)
    final = chunks[-1]
    assert final.provenance is not None
    assert final.provenance.destination == "local"
    assert final.provenance.decision_reason == "local.cloud_failed_before_first_token"
    assert final.usage is not None and final.usage.completion_tokens > 0
    assert len(router.chat_requests()) == 1


def test_cut_mid_stream_continues_locally(box: RunningAgent, router: FakeRouter) -> None:
    router.on_chat(Reply(then="cut", after=2))
    chunks = _ask(box, DataClass.PUBLIC)
    text = "".join(c.delta for c in chunks)
    assert text.startswith("Hello from")
    final = chunks[-1]
    assert final.provenance is not None
    assert final.provenance.destination == "local"
    assert final.provenance.decision_reason == "local.cloud_failover"


def test_concurrent_escalations_never_overshoot_the_budget(
    box: RunningAgent, router: FakeRouter
) -> None:
    errors: list[BaseException] = []

    def one() -> None:
        try:
            _ask(box, DataClass.PUBLIC)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    usage = box.agent.ledger.usage(datetime.now(UTC))
    assert usage.day_tokens <= 100000


def _record(box: RunningAgent) -> AuditRecord:
    """The newest audit record (written once the request's cleanup is done)."""
    deadline = time.monotonic() + 10
    seen = box.agent.audit.head()[0]
    while True:
        records = box.agent.audit.tail(1)
        if records and (records[-1].attempts is not None or time.monotonic() > deadline):
            return records[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit record after seq {seen}")
        time.sleep(0.02)


def _open_reservations(box: RunningAgent) -> int:
    """Open reservations once in-flight cleanup has finished (polled, at most 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        reserved = box.agent.ledger.usage(datetime.now(UTC)).reserved
        if reserved == 0 or time.monotonic() > deadline:
            return reserved
        time.sleep(0.02)


def test_a_cloud_answer_is_recorded_with_its_real_usage_and_cost(
    box: RunningAgent, router: FakeRouter
) -> None:
    final = _ask(box, DataClass.PUBLIC)[-1]
    record = _record(box)
    assert record.left_box == 1 and record.fallback_reason == ""
    [leg] = record.attempt_list()
    # The stand-in reports 11 prompt and 5 completion tokens, served by novita at
    # 0.2/0.8 USD per million: the record carries that, not an estimate.
    assert (leg["destination"], leg["outcome"], leg["usage"]) == ("cloud", "ok", "reported")
    assert (leg["tokens_in"], leg["tokens_out"]) == (11, 5)
    assert (leg["provider"], leg["http_status"], leg["sent"]) == ("novita", 200, True)
    assert record.cost_usd == pytest.approx(11 * 0.2e-6 + 5 * 0.8e-6)
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (11, 5)
    usage = box.agent.ledger.usage(datetime.now(UTC))
    assert usage.day_usd == pytest.approx(record.cost_usd)
    assert usage.reserved == 0


def test_a_refused_cloud_request_left_the_box_and_is_recorded_as_cloud(
    box: RunningAgent, router: FakeRouter
) -> None:
    router.on_chat(Status(503))
    final = _ask(box, DataClass.PUBLIC)[-1]
    record = _record(box)
    assert final.provenance is not None
    # The prompt reached the router: an auditor filtering on destination='cloud' finds it.
    assert (record.destination, record.left_box) == ("cloud", 1)
    assert record.reason == "cloud.large_model_requested"
    assert record.fallback_reason == final.provenance.decision_reason
    assert record.fallback_reason == "local.cloud_failed_before_first_token"
    cloud, local = record.attempt_list()
    assert (cloud["outcome"], cloud["http_status"], cloud["usage"]) == ("server", 503, "none")
    assert cloud["cost_usd"] == 0
    assert final.usage is not None
    assert (local["destination"], local["outcome"]) == ("local", "ok")
    assert local["tokens_out"] == final.usage.completion_tokens == record.tokens_out
    # Refused with an error status: nothing reached a provider, the reservation is released.
    usage = box.agent.ledger.usage(datetime.now(UTC))
    assert (usage.reserved, usage.day_tokens) == (0, 0)


def test_a_mid_stream_cut_records_both_legs_and_keeps_the_worst_case(
    box: RunningAgent, router: FakeRouter
) -> None:
    router.on_chat(Reply(then="cut", after=2))
    final = _ask(box, DataClass.PUBLIC)[-1]
    record = _record(box)
    assert final.provenance is not None
    assert record.destination == "cloud"
    assert record.fallback_reason == final.provenance.decision_reason == "local.cloud_failover"
    cloud, local = record.attempt_list()
    # The provider accepted it and sent no usage: it may bill up to max_tokens.
    assert (cloud["outcome"], cloud["usage"], cloud["http_status"]) == ("cut", "worst_case", 200)
    assert cloud["cost_usd"] > 0 and cloud["model"] == DEFAULT_MODEL
    assert final.usage is not None
    assert (local["outcome"], local["tokens_out"]) == ("ok", final.usage.completion_tokens)
    assert record.tokens_out == cloud["tokens_out"] + local["tokens_out"]
    assert record.model == DEFAULT_MODEL  # the record names where the prompt went
    assert _open_reservations(box) == 0
    assert box.agent.ledger.usage(datetime.now(UTC)).day_usd == pytest.approx(record.cost_usd)


def test_failover_fail_is_recorded_as_the_cloud_leg_it_was(
    tmp_path: Path, router: FakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    for box in run_box(box_config(tmp_path, router, failover="fail"), caplog):
        router.on_chat(Reply(then="cut", after=2))
        with pytest.raises(grpc.RpcError) as raised:
            _ask(box, DataClass.PUBLIC)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "incomplete" in (raised.value.details() or "")
        record = _record(box)
        [cloud] = record.attempt_list()
        assert (record.destination, cloud["outcome"], cloud["model"]) == (
            "cloud",
            "cut",
            DEFAULT_MODEL,
        )
        assert record.tokens_in > 0 and record.tokens_out > 0 and record.cost_usd > 0
        assert _open_reservations(box) == 0


def _status(box: RunningAgent) -> pb.ConnectivityStatus:
    with Client(box.target) as client:
        return client.status(timeout=10).connectivity


def test_no_balance_shows_as_account_exhausted_in_status_metrics_and_audit(
    box: RunningAgent, router: FakeRouter
) -> None:
    # The router's own shape: a bare string error.
    router.on_chat(Status(402, body={"error": "You have depleted your monthly included credits"}))
    final = _ask(box, DataClass.PUBLIC)[-1]
    assert final.provenance is not None and final.provenance.destination == "local"
    [cloud, _] = _record(box).attempt_list()
    assert (cloud["outcome"], cloud["http_status"]) == ("account_exhausted", 402)
    status = _status(box)
    assert (status.state, status.reason, status.circuit) == ("offline", "account_exhausted", "open")
    assert status.retry_in_s > 0 and status.last_failure_kind == "account_exhausted"
    code, out, _ = _cli("status", "--target", box.target)
    assert code == 0 and "cloud:     offline (account_exhausted), retry in " in out
    metrics = box.agent.metrics.render().decode()
    assert 'edge_agent_connectivity_reason{reason="account_exhausted"} 1.0' in metrics
    assert 'edge_agent_requests_total{destination="cloud",outcome="account_exhausted"}' in metrics
    # No new round trip while the account is empty.
    sent = len(router.chat_requests())
    final = _ask(box, DataClass.PUBLIC)[-1]
    assert final.provenance is not None
    assert final.provenance.decision_reason == "local.large_model_requested_but_offline"
    assert len(router.chat_requests()) == sent
    assert box.agent.ledger.usage(datetime.now(UTC)).day_tokens == 0


def test_rate_limiting_shows_with_its_retry_time(box: RunningAgent, router: FakeRouter) -> None:
    router.on_chat(Status(429, headers={"Retry-After": "120"}))
    _ask(box, DataClass.PUBLIC)
    status = _status(box)
    assert (status.state, status.reason) == ("offline", "rate_limited")
    assert 100 < status.retry_in_s <= 120


def test_a_model_no_enabled_provider_serves_is_skipped_not_blamed_on_the_client(
    box: RunningAgent, router: FakeRouter
) -> None:
    router.on_chat(
        Status(
            400,
            body={
                "error": {
                    "message": f"The requested model '{DEFAULT_MODEL}' is not supported by "
                    "any provider you have enabled.",
                    "type": "invalid_request_error",
                    "code": "model_not_supported",
                }
            },
        )
    )
    final = _ask(box, DataClass.PUBLIC)[-1]
    assert final.provenance is not None and final.provenance.destination == "local"
    [cloud, _] = _record(box).attempt_list()
    assert cloud["outcome"] == "model_unavailable"
    status = _status(box)
    assert list(status.unavailable_models) == [DEFAULT_MODEL]
    assert status.state == "online"  # the route works; this model does not
    sent = len(router.chat_requests())
    final = _ask(box, DataClass.PUBLIC)[-1]
    assert final.provenance is not None
    assert final.provenance.decision_reason == "local.large_model_requested_but_model_unavailable"
    assert len(router.chat_requests()) == sent


def test_last_probe_age_is_real(box: RunningAgent) -> None:
    box.call(box.agent.connectivity.probe_now())
    first = _status(box).last_probe_age_s
    time.sleep(0.3)
    later = _status(box).last_probe_age_s
    assert 0 <= first < later and later >= 0.3


def test_a_schema_request_goes_only_to_a_provider_with_structured_output(
    tmp_path: Path, router: FakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})
    opts = ChatOptions(
        max_tokens=16,
        data_class=DataClass.PUBLIC,
        route=RoutePreference.LARGE_MODEL,
        json_schema=schema,
    )
    # The catalog is read at every probe here, so a change of capabilities is seen at once.
    for box in run_box(box_config(tmp_path, router, catalog_refresh_s=0.001), caplog):
        with Client(box.target) as client:
            final = list(client.chat([("user", "Hi")], opts, timeout=60))[-1]
        assert final.provenance is not None
        assert final.provenance.decision_reason == (
            "local.large_model_requested_but_no_capable_provider"
        )
        assert router.chat_requests() == []
        # The policy's provider ("together") gains structured output: now it may go.
        router.catalog["data"][0]["providers"][1]["supports_structured_output"] = True
        box.call(box.agent.connectivity.probe_now())
        with Client(box.target) as client:
            final = list(client.chat([("user", "Hi")], opts, timeout=60))[-1]
        assert final.provenance is not None and final.provenance.destination == "cloud"
        body = router.chat_requests()[-1].body
        assert body["model"] == f"{DEFAULT_MODEL}:together"
        assert body["response_format"]["type"] == "json_schema"


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_the_cli_sets_data_class_route_and_model(box: RunningAgent, router: FakeRouter) -> None:
    code, out, err = _cli(
        "chat", "Hello?", "--target", box.target, "--max-tokens", "16", "-v",
        "--data-class", "public", "--route", "large", "--model", DEFAULT_MODEL,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "Hello from the cloud."
    assert "cloud: " in err and "cloud.large_model_requested" in err
    assert router.chat_requests()[-1].body["model"].startswith(DEFAULT_MODEL)
    code, out, err = _cli(
        "chat", "Hello?", "--target", box.target, "--max-tokens", "4", "-v",
        "--data-class", "public", "--route", "local",
    )  # fmt: skip
    assert code == 0 and "local: " in err and "local.default" in err
    assert len(router.chat_requests()) == 1
    # Without a class the policy's default (restricted) keeps it home.
    code, out, err = _cli("chat", "Hello?", "--target", box.target, "--route", "large", "-v")
    assert code == 0 and "local.large_model_requested_but_data_class_local_only" in err
    assert len(router.chat_requests()) == 1


def test_a_402_inside_a_200_stream_is_account_exhaustion_and_costs_nothing(
    box: RunningAgent, router: FakeRouter
) -> None:
    credits = {"error": {"message": "You have depleted your monthly included credits", "code": 402}}
    router.on_chat(Reply(after=0, then="error", error_payload=credits))
    final = _ask(box, DataClass.PUBLIC)[-1]
    assert final.provenance is not None
    assert final.provenance.decision_reason == "local.cloud_failed_before_first_token"
    record = _record(box)
    cloud, _ = record.attempt_list()
    assert (cloud["outcome"], cloud["http_status"], cloud["usage"]) == (
        "account_exhausted",
        200,
        "none",
    )
    assert (record.destination, record.cost_usd) == ("cloud", 0)
    assert _status(box).reason == "account_exhausted"
    usage = box.agent.ledger.usage(datetime.now(UTC))
    assert (usage.reserved, usage.day_tokens) == (0, 0)
