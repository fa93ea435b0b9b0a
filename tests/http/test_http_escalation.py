"""The HTTP API on a box that may escalate: signed policy, sealed token, router stand-in.

A hub model name asks for the cloud under policy: public data goes there with its tools,
and the provider's call comes back as OpenAI tool_calls; restricted data stays local and
the router hears nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from daemon_harness import RunningAgent, start_agent, stop_agent
from escalation_box import box_config, serving_router
from fake_router import DEFAULT_MODEL, FakeRouter, Reply
from http_harness import WEATHER_TOOL, http_config, openai_client

ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS: Any = [WEATHER_TOOL]


@pytest.fixture(scope="module")
def router() -> Iterator[FakeRouter]:
    yield from serving_router()


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, router: FakeRouter) -> Iterator[RunningAgent]:
    tmp = tmp_path_factory.mktemp("escalating")
    running, thread = start_agent(box_config(tmp, router, base=http_config(tmp)))
    running.call(running.agent.connectivity.probe_now())
    try:
        yield running
    finally:
        stop_agent(running, thread)


def test_the_cloud_model_is_listed(box: RunningAgent) -> None:
    with openai_client(box, api_key="demo") as client:
        models = {m.id: m.owned_by for m in client.models.list().data}
        one = client.models.retrieve(DEFAULT_MODEL)  # "org/model": a path with a slash
    assert models[DEFAULT_MODEL] == "huggingface"
    assert one.id == DEFAULT_MODEL
    assert (one.model_extra or {})["edge_destination"] == "cloud"


def test_public_tools_reach_the_provider_and_its_call_comes_back(
    box: RunningAgent, router: FakeRouter
) -> None:
    router.on_chat(
        Reply(
            words=(),
            tool_calls=({"id": "call_77", "name": "get_weather", "arguments": '{"city":"Paris"}'},),
        )
    )
    before = len(router.chat_requests())
    with openai_client(box, api_key="demo") as client:
        completion = client.chat.completions.create(
            model=f"{DEFAULT_MODEL}:cheapest",
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            max_tokens=32,
            extra_body={"data_class": "public"},
        )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("call_77", "get_weather", {"city": "Paris"})
    ]
    provenance = (completion.model_extra or {})["edge_provenance"]
    assert provenance["destination"] == "cloud"
    sent = router.chat_requests()[before:]
    assert len(sent) == 1
    assert sent[0].body["tools"] == TOOLS
    assert sent[0].body["tool_choice"] == "required"


def test_restricted_data_with_a_cloud_model_stays_local(
    box: RunningAgent, router: FakeRouter
) -> None:
    before = len(router.chat_requests())
    with openai_client(box, api_key="demo") as client:
        completion = client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": "Patient 4711 has a fever."}],
            max_tokens=8,
            extra_headers={"X-Edge-Data-Class": "restricted"},
        )
    provenance = (completion.model_extra or {})["edge_provenance"]
    assert provenance["destination"] == "local"
    assert provenance["decision_reason"].startswith("local.large_model_requested_but_")
    assert router.chat_requests()[before:] == []
    assert box.agent.audit.tail(1)[-1].destination == "local"
