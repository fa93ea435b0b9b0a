"""Streaming chat through the real daemon: answers, concurrency, provenance, sampling."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import grpc
from daemon_harness import RunningAgent

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc
from edge_agent.client import ChatOptions, Client
from edge_agent.engine._cpus import usable_cores


def _ask(channel: grpc.Channel, text: str, **fields: object) -> list[pb.ChatResponse]:
    stub = pb_grpc.InferenceStub(channel)
    request = pb.ChatRequest(messages=[pb.ChatMessage(role="user", content=text)], **fields)  # type: ignore[arg-type]
    return list(stub.Chat(request, timeout=60))


def test_chat_streams_deltas_then_a_final_message(channel: grpc.Channel) -> None:
    responses = _ask(channel, "Tell me about the river.", max_tokens=16)
    *deltas, final = responses
    assert deltas, "the answer streamed in pieces"
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in deltas)
    assert len({r.id for r in responses}) == 1
    text = "".join(r.delta for r in responses)
    assert text.strip()
    assert final.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)
    assert 0 < final.usage.completion_tokens <= 16
    assert final.usage.prompt_tokens > 0
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens
    p = final.provenance
    assert p.destination == pb.DESTINATION_LOCAL
    assert p.model == "edge-demo-mistral"
    assert p.execution_provider == "cpu"
    assert p.decision_reason
    assert final.timing.time_to_first_token_ms > 0
    assert final.timing.total_ms >= final.timing.time_to_first_token_ms


def test_max_tokens_ends_with_length(channel: grpc.Channel) -> None:
    final = _ask(channel, "Count to one hundred, slowly.", max_tokens=3, min_tokens=3)[-1]
    assert final.finish_reason == pb.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 3


def test_min_tokens_holds_off_the_end_of_sequence(channel: grpc.Channel) -> None:
    free = _ask(channel, "Hi.", max_tokens=200)[-1]
    held = _ask(channel, "Hi.", max_tokens=200, min_tokens=150)[-1]
    assert held.usage.completion_tokens >= 150
    assert held.usage.completion_tokens >= free.usage.completion_tokens


def test_greedy_answers_are_deterministic(channel: grpc.Channel) -> None:
    a = "".join(r.delta for r in _ask(channel, "What is a license?", max_tokens=12))
    b = "".join(r.delta for r in _ask(channel, "What is a license?", max_tokens=12))
    assert a == b


def test_concurrent_streams_all_complete_with_their_own_answers(daemon: RunningAgent) -> None:
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(8)]

    def one(prompt: str) -> tuple[str, int]:
        with Client(daemon.target) as client:
            chunks = list(client.chat([("user", prompt)], ChatOptions(max_tokens=10), timeout=60))
        assert chunks[-1].usage is not None
        return "".join(c.delta for c in chunks), chunks[-1].usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(one, prompts))
    # Batching must not mix streams: each answer equals the same prompt asked alone.
    alone = [one(p) for p in prompts[:3]]
    assert concurrent[:3] == alone
    assert all(n > 0 for _, n in concurrent)


def test_seeded_sampling_is_reproducible_on_cpu(daemon: RunningAgent) -> None:
    def sample(seed: int) -> str:
        with Client(daemon.target) as client:
            opts = ChatOptions(max_tokens=12, temperature=1.0, top_k=50, seed=seed)
            return "".join(c.delta for c in client.chat([("user", "Say something.")], opts))

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_stop_string_ends_the_answer_before_it(daemon: RunningAgent) -> None:
    with Client(daemon.target) as client:
        free = "".join(
            c.delta for c in client.chat([("user", "Hello")], ChatOptions(max_tokens=24))
        )
        words = free.split()
        assert len(words) >= 3, free
        stop = words[2]
        chunks = list(client.chat([("user", "Hello")], ChatOptions(max_tokens=24, stop=[stop])))
    text = "".join(c.delta for c in chunks)
    assert stop not in text
    assert free.startswith(text)
    assert chunks[-1].finish_reason == "stop"


def test_json_schema_guides_the_answer(daemon: RunningAgent) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    with Client(daemon.target) as client:
        opts = ChatOptions(max_tokens=40, json_schema=json.dumps(schema))
        text = "".join(c.delta for c in client.chat([("user", "Give me JSON.")], opts))
    assert text.lstrip().startswith("{")
    if text.rstrip().endswith("}"):
        assert isinstance(json.loads(text)["a"], int)


def test_status_and_models_report_the_serving_provider(daemon: RunningAgent) -> None:
    with Client(daemon.target) as client:
        status = client.status()
        models = client.list_models()
    assert status.state == pb.SERVING_STATE_SERVING
    assert status.engine.state == "ready"
    assert status.engine.execution_provider == "cpu"
    # intra_op_threads = 0 resolves to the cores this process may use, as the worker saw them.
    assert status.engine.intra_op_threads == usable_cores()
    assert status.active_model.name == "edge-demo-mistral"
    assert status.agent_version
    assert len(models) == 1 and models[0].active
    assert models[0].execution_provider == "cpu"
    assert models[0].context_length > 0
