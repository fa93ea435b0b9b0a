"""The OpenAI-compatible API through the official `openai` SDK against the real daemon."""

from __future__ import annotations

import json
import time

import grpc
import httpx
import jsonschema
import openai
import pytest
from daemon_harness import RunningAgent
from http_harness import LOCAL_MODEL, base_url, post_raw, sse_events
from openai import OpenAI

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc

QUESTION = "Tell me about the river."


def test_non_streaming_answer_matches_the_grpc_answer(client: OpenAI, daemon: RunningAgent) -> None:
    completion = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=16,
        temperature=0,
    )
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.model == LOCAL_MODEL
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    provenance = (completion.model_extra or {})["edge_provenance"]
    assert provenance["destination"] == "local"
    assert provenance["model"] == LOCAL_MODEL
    assert provenance["decision_reason"] == "local.default"
    # The same greedy request over gRPC runs the same chat path: same text, same counts.
    with grpc.insecure_channel(daemon.target) as channel:
        request = pb.ChatRequest(
            messages=[pb.ChatMessage(role="user", content=QUESTION)], max_tokens=16
        )
        answers = list(pb_grpc.InferenceStub(channel).Chat(request, timeout=60))
    assert "".join(a.delta for a in answers) == choice.message.content
    assert answers[-1].usage.prompt_tokens == usage.prompt_tokens
    assert answers[-1].usage.completion_tokens == usage.completion_tokens


def test_streaming_with_usage_equals_the_whole_answer(client: OpenAI) -> None:
    ask = {
        "model": LOCAL_MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 16,
    }
    whole = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    chunks = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    )
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert whole.usage is not None
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens


def test_stream_without_include_usage_has_no_usage_chunk(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[{"role": "user", "content": "Hi."}],
            max_tokens=4,
            stream=True,
        )
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_curl_style_sse_framing(daemon: RunningAgent) -> None:
    body = {
        "model": LOCAL_MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with (
        httpx.Client(base_url=base_url(daemon), timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        raw = response.read()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    objects = [json.loads(e) for e in events[:-1]]
    finals = [o for o in objects if o["choices"] and o["choices"][0]["finish_reason"]]
    assert len(finals) == 1
    assert finals[0]["edge_provenance"]["destination"] == "local"
    assert objects[-1]["usage"]["total_tokens"] > 0


def test_models_list_and_retrieve(client: OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == LOCAL_MODEL
    model = client.models.retrieve(LOCAL_MODEL)
    assert model.id == LOCAL_MODEL
    assert model.owned_by == "edge-agent"
    assert (model.model_extra or {})["edge_context_length"] > 0
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"


def test_health_is_public_and_ready(daemon: RunningAgent) -> None:
    with httpx.Client(base_url=base_url(daemon), timeout=10) as http:
        ready = http.get("/health")
        live = http.get("/health/live")
        unknown = http.get("/health/nope")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "live": True, "ready": True}
    assert live.status_code == 200
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3.5}, "temperature"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
        ),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"top_p": 0}, "top_p"),
        ({"data_class": "secret"}, "data_class"),
        ({"priority": 11}, "priority"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    client: OpenAI, fields: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        # extra_body: sent as given (the SDK would refuse some of these itself).
        client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[{"role": "user", "content": "Hi."}],
            max_tokens=4,
            extra_body=fields,
        )
    assert info.value.status_code == 400
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(param)


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_beyond_the_context_is_400_even_when_streaming(
    client: OpenAI, stream: bool
) -> None:
    # The local path measures the context; the status line waits for the first chunk.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[{"role": "user", "content": "Hi."}],
            max_tokens=1_000_000,
            stream=stream,
        )
    assert info.value.body["param"] == "max_tokens"  # type: ignore[index]


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi."}]
        )
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"  # type: ignore[index]


def test_unreadable_and_oversized_bodies(daemon: RunningAgent) -> None:
    with httpx.Client(base_url=base_url(daemon), timeout=30) as http:
        broken = http.post("/v1/chat/completions", content=b"{not json")
        huge = http.post(
            "/v1/chat/completions", content=b"x" * (daemon.agent.config.http.max_body_bytes + 1)
        )
        wrong_method = http.get("/v1/chat/completions")
    assert broken.status_code == 400
    assert broken.json()["error"]["param"] == "body"
    assert huge.status_code == 413
    assert huge.json()["error"]["type"] == "invalid_request_error"
    assert wrong_method.status_code == 404


def test_json_schema_answer_is_compact_and_validates(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "enum": ["red", "green", "blue"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    completion = client.chat.completions.create(
        model=LOCAL_MODEL,
        messages=[{"role": "user", "content": "Pick a colour and a count."}],
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "pick", "schema": schema, "strict": True},
        },
    )
    text = completion.choices[0].message.content or ""
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), schema)
    assert text == json.dumps(json.loads(text), separators=(",", ":")), "no padding"


def test_extensions_by_body_and_header(daemon: RunningAgent) -> None:
    body = {
        "model": "mistralai/Mistral-Small-24B-Instruct-2501:cheapest",
        "messages": [{"role": "user", "content": "Hi."}],
        "max_tokens": 4,
        "data_class": "restricted",
    }
    # A hub id asks for the cloud; with no policy or credential the box answers locally.
    answer = post_raw(daemon, body)
    assert answer.status_code == 200
    provenance = answer.json()["edge_provenance"]
    assert provenance["destination"] == "local"
    assert provenance["decision_reason"].startswith("local.large_model_requested_but_")
    assert "destination=local" in answer.headers["x-edge-provenance"]
    disagree = post_raw(daemon, body, **{"X-Edge-Data-Class": "public"})
    assert disagree.status_code == 400
    assert disagree.json()["error"]["param"] == "data_class"
    by_header = post_raw(
        daemon,
        {**body, "data_class": None, "model": LOCAL_MODEL},
        **{"X-Edge-Route": "local_only", "X-Edge-Priority": "3"},
    )
    assert by_header.status_code == 200
    assert by_header.json()["edge_provenance"]["decision_reason"] == "local.default"


def _busy(daemon: RunningAgent) -> bool:
    """Whether the worker holds any request (running, pending in an Engine, or waiting)."""
    stats = daemon.call(daemon.agent.engine.probe())
    return bool(stats["active"] or stats["pending_in_engines"] or stats["waiting"])


def _cancelled(daemon: RunningAgent) -> float:
    value = daemon.agent.metrics.registry.get_sample_value(
        "edge_agent_requests_total", {"outcome": "cancelled", "destination": "local"}
    )
    return value or 0.0


def _wait_cancelled(daemon: RunningAgent, before: float) -> None:
    """Cancelled (not run to its 1500 tokens, which would count as "ok"), and let go of."""
    deadline = time.monotonic() + 10
    while (_cancelled(daemon) == before or _busy(daemon)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cancelled(daemon) == before + 1
    assert not _busy(daemon), "the worker let go of the request"


def _ok(daemon: RunningAgent) -> float:
    value = daemon.agent.metrics.registry.get_sample_value(
        "edge_agent_requests_total", {"outcome": "ok", "destination": "local"}
    )
    return value or 0.0


def test_a_finished_stream_is_recorded_ok_not_cancelled(
    daemon: RunningAgent, client: OpenAI
) -> None:
    """The SDK closes the response at [DONE]; the answer was whole, and the metrics and
    audit say so (they said "cancelled" while the stream was closed at its final chunk)."""
    ok, cancelled = _ok(daemon), _cancelled(daemon)
    chunks = list(
        client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[{"role": "user", "content": "Hi."}],
            max_tokens=6,
            stream=True,
            extra_headers={"X-Request-Id": "whole-stream"},
        )
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # The stream's end is counted and audited after [DONE] reached the client: wait for both
    # (other tests' late records may land first, so look the record up by its id).
    until = time.monotonic() + 10
    record = None
    while time.monotonic() < until:
        record = next(
            (r for r in daemon.agent.audit.tail(50) if r.request_id == "whole-stream"), None
        )
        if record is not None and _ok(daemon) > ok:
            break
        time.sleep(0.02)
    assert record is not None, "the finished stream was audited"
    assert (_ok(daemon), _cancelled(daemon)) == (ok + 1, cancelled)
    assert [a["outcome"] for a in record.attempt_list()] == ["ok"]


def test_client_disconnect_mid_stream_frees_the_slot(daemon: RunningAgent) -> None:
    cancelled_before = _cancelled(daemon)
    body = {
        "model": LOCAL_MODEL,
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "max_tokens": 1500,
        "min_tokens": 1500,
        "stream": True,
    }
    with (
        httpx.Client(base_url=base_url(daemon), timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        next(response.iter_bytes())
    # Leaving the block closed the connection mid-answer (the 1500 tokens take ~1 s).
    _wait_cancelled(daemon, cancelled_before)


def test_client_gone_during_a_non_streaming_answer_cancels_it(daemon: RunningAgent) -> None:
    cancelled_before = _cancelled(daemon)
    body = {
        "model": LOCAL_MODEL,
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "max_tokens": 1500,
        "min_tokens": 1500,
    }
    # The client gives up long before the ~1 s answer is complete.
    with (
        httpx.Client(base_url=base_url(daemon), timeout=0.2) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.post("/v1/chat/completions", json=body)
    _wait_cancelled(daemon, cancelled_before)
