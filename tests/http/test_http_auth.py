"""An installed box's HTTP API: TLS with the device certificate, tokens, roles, rate limits.

The daemon listens on a non-loopback address (so TLS is on, as on a LAN) and allows no
anonymous loopback callers; clients connect over loopback and verify the device certificate.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest
from daemon_harness import RunningAgent, start_agent, stop_agent
from http_harness import LOCAL_MODEL, http_config
from openai import OpenAI

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc
from edge_agent.config import HttpConfig
from edge_agent.tls import AuthConfig, RateLimit, TokenEntry, hash_token

TOKEN = "eat_http-test-client-token-0001"
BURST_TOKEN = "eat_http-test-burst-token-0002"
BURST = 5


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    auth = AuthConfig(
        allow_anonymous_loopback=False,
        tokens=(
            TokenEntry(name="hmi", role="client", sha256=hash_token(TOKEN)),
            TokenEntry(name="burst", role="client", sha256=hash_token(BURST_TOKEN)),
        ),
        client_rate=RateLimit(requests_per_s=0.01, burst=BURST),
    )
    config = http_config(tmp_path_factory.mktemp("box"), accept_any_token=False, auth=auth)
    # A wildcard address is not loopback: the HTTP API gets TLS like a LAN listener.
    config = dataclasses.replace(config, http=HttpConfig(listen=("0.0.0.0:0",)))
    running, thread = start_agent(config)
    yield running
    stop_agent(running, thread)


def _verifying(box: RunningAgent) -> ssl.SSLContext:
    """Trust exactly the device certificate (the pinning clients do with its fingerprint)."""
    context = ssl.create_default_context(cafile=str(box.agent.config.tls.cert_file))
    return context


def _url(box: RunningAgent) -> str:
    return f"https://127.0.0.1:{box.agent.http_ports[0]}"


def _client(box: RunningAgent, key: str) -> OpenAI:
    http = openai.DefaultHttpxClient(verify=_verifying(box), timeout=60)
    return OpenAI(base_url=_url(box) + "/v1", api_key=key, max_retries=0, http_client=http)


def test_tls_with_the_device_certificate_and_a_valid_token(box: RunningAgent) -> None:
    with _client(box, TOKEN) as client:
        completion = client.chat.completions.create(
            model=LOCAL_MODEL,
            messages=[{"role": "user", "content": "Hi."}],
            max_tokens=4,
            extra_headers={"X-Request-Id": "trace-4711"},
        )
    assert completion.choices[0].message.content is not None
    assert (completion.model_extra or {})["edge_provenance"]["destination"] == "local"
    # Audited under the token's identity, as a gRPC call with the same token would be.
    record = box.agent.audit.tail(1)[-1]
    assert record.client_id == "token:hmi"
    assert record.request_id == "trace-4711"


def test_plaintext_is_refused_on_the_tls_port(box: RunningAgent) -> None:
    with (
        httpx.Client(timeout=10) as http,
        pytest.raises(httpx.HTTPError),
    ):
        http.get(f"http://127.0.0.1:{box.agent.http_ports[0]}/health")


def test_unknown_or_missing_keys_are_401(box: RunningAgent) -> None:
    with (
        _client(box, "sk-not-a-box-token") as client,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        client.models.list()
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    with httpx.Client(verify=_verifying(box), timeout=10) as http:
        missing = http.get(_url(box) + "/v1/models")
        malformed = http.get(_url(box) + "/v1/models", headers={"Authorization": "Basic eA=="})
    for response in (missing, malformed):
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


def test_health_needs_no_token(box: RunningAgent) -> None:
    with httpx.Client(verify=_verifying(box), timeout=10) as http:
        health = http.get(_url(box) + "/health")
    assert health.status_code == 200
    assert health.json()["ready"] is True


def test_rate_limit_is_429_with_retry_after_and_shared_with_grpc(box: RunningAgent) -> None:
    statuses = []
    with httpx.Client(verify=_verifying(box), timeout=10) as http:
        headers = {"Authorization": f"Bearer {BURST_TOKEN}"}
        for _ in range(BURST + 1):
            response = http.get(_url(box) + "/v1/models", headers=headers)
            statuses.append(response.status_code)
    assert statuses == [200] * BURST + [429]
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["type"] == "rate_limit_error"
    # The same client's bucket is empty for gRPC too: one limiter for both front ends.
    with grpc.insecure_channel(box.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.InferenceStub(channel).ListModels(
                pb.ListModelsRequest(),
                metadata=(("authorization", f"Bearer {BURST_TOKEN}"),),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
