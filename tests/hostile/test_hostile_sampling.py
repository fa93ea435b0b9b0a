"""Sampling requests the API calls valid are served (found by the hostile fuzzer)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from daemon_harness import RunningAgent

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc


@pytest.mark.parametrize("extra", [{}, {"top_p": 0.5}, {"top_k": 0}, {"top_k": 1}, {"top_k": 40}])
def test_sampling_without_a_top_k_cut_is_served(
    daemon: RunningAgent, extra: dict[str, Any]
) -> None:
    # The demo model's search defaults say top_k = 1; "temperature > 0, top_k unset" means
    # "no cut" (API.md) and must sample instead of being refused by the engine.
    request = pb.ChatRequest(
        messages=[pb.ChatMessage(role="user", content="Tell a story")],
        max_tokens=8,
        temperature=1.0,
        **extra,
    )
    with grpc.insecure_channel(daemon.target) as ch:
        final = list(pb_grpc.InferenceStub(ch).Chat(request, timeout=60))[-1]
    assert final.usage.completion_tokens > 0
