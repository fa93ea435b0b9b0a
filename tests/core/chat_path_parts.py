"""The chat path assembled from its real parts, with two injected fakes at its edges.

The engine is a :class:`ScriptedEngine` (the ``LocalEngine`` protocol: it answers with a
fixed text token by token, remembers what it was asked, and records when a generation is
closed); the cloud is the real ``RouterClient`` over an ``httpx.MockTransport`` whose chat
handler each test chooses. Everything between them is the daemon's own: ``ChatService``,
``LocalChat`` with a real admission controller, the signed policy store, the SQLite budget
ledger, the hash-chained audit log, the connectivity monitor, the failover helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent._fleetkeys import FleetKeyring
from edge_agent.audit import AuditLog
from edge_agent.chat import CallContext, ChatChunk, ChatSpec
from edge_agent.chat.service import (
    AuditRecorder,
    ChatService,
    CloudRoute,
    LocalChat,
    PolicySource,
)
from edge_agent.cloud import CloudConfig, ConnectivityMonitor, RouterClient
from edge_agent.credentials import CredentialScope, EnvelopeInfo
from edge_agent.engine import (
    Delta,
    EngineInfo,
    Finished,
    GenerationEvent,
    GenerationRequest,
    ModelIdentity,
    Started,
)
from edge_agent.metrics import Metrics
from edge_agent.policy import BudgetLedger, LocalPolicyOverrides, PolicyStore, sign_policy
from edge_agent.pressure import AdmissionConfig, AdmissionController

CLOUD_MODEL = "org/big-model"
CLOUD_TOKEN = "hf_chatPathUnitSentinel0123456789"
BASE_URL = "https://router.test/v1"

# Public data may go to the cloud; everything else stays on the box.
POLICY = f"""
version = 1
default_data_class = "restricted"

[data_classes]
public = "cloud"
internal = "local"
confidential = "local"
restricted = "local"

[budget]
daily_tokens = 100000
monthly_tokens = 1000000
daily_usd = 5.0
monthly_usd = 50.0

[cloud]
default_model = "{CLOUD_MODEL}"
provider = "together"

[cloud.models."{CLOUD_MODEL}"]
input_usd_per_mtok = 0.5
output_usd_per_mtok = 1.0

[clients."*"]
escalation = true
max_cloud_data_class = "public"
"""

# The installed credential's facts (its token is CLOUD_TOKEN): escalation needs one.
CREDENTIAL = EnvelopeInfo(
    envelope_id="env-unit",
    device_id="box-unit",
    issued_at=datetime(2026, 1, 1, tzinfo=UTC),
    expires_at=datetime(2099, 1, 1, tzinfo=UTC),
    scope=CredentialScope(frozenset({CLOUD_MODEL}), frozenset(), None, None),
    label="unit",
    signer_key_id="fleet",
)

CATALOG = {
    "object": "list",
    "data": [
        {
            "id": CLOUD_MODEL,
            "object": "model",
            "providers": [
                {
                    "provider": "together",
                    "status": "live",
                    "context_length": 131072,
                    "pricing": {"input": 0.3, "output": 0.6},
                    "supports_tools": True,
                    "supports_structured_output": False,
                }
            ],
        }
    ],
}


class ScriptedEngine:
    """A ``LocalEngine`` that answers ``words`` one per event.

    ``hold_after`` (a number of words): the stream waits there until ``release`` is set,
    so a test can cancel a generation that is in flight.
    """

    def __init__(self, model_dir: Path, words: Iterable[str] = ("local", " answer")) -> None:
        self.words = tuple(words)
        self.requests: list[GenerationRequest] = []
        self.closed = 0  # generations ended before their Finished event (cancel, close)
        self.hold_after: int | None = None
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self._model = ModelIdentity("scripted", "1", model_dir)
        self._info = EngineInfo(
            execution_provider="cpu",
            context_length=4096,
            max_batch_size=4,
            lanes=1,
            vocab_size=1000,
            pid=0,
            prompt_format="chat-template",
        )

    @property
    def model(self) -> ModelIdentity:
        return self._model

    @property
    def info(self) -> EngineInfo | None:
        return self._info

    def prefill_buffer_bytes(self, prompt_tokens: int) -> int:
        # Reading the prompt in one step: [prompt, vocab] fp32 logits, as the real engine says.
        return prompt_tokens * self._info.vocab_size * 4

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.requests.append(request)
        prompt = sum(len(m.content) for m in request.messages)
        finished = False
        try:
            yield Started(prompt)
            for i, word in enumerate(self.words):
                if i == self.hold_after:
                    self.holding.set()
                    await self.release.wait()
                yield Delta(word)
            finished = True
            yield Finished("stop", prompt, len(self.words))
        finally:
            if not finished:
                self.closed += 1


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class ScriptedStream(httpx.AsyncByteStream):
    """An SSE body: ``events`` (JSON objects or ``[DONE]``), then ``then``: "end" (the body
    ends), "cut" (the connection breaks) or "hang" (nothing more arrives)."""

    def __init__(self, events: Iterable[dict[str, Any] | str], then: str = "end") -> None:
        self._events = list(events)
        self._then = then
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self._events:
            data = event if isinstance(event, str) else json.dumps(event)
            yield f"data: {data}\n\n".encode()
        if self._then == "cut":
            raise httpx.ReadError("connection reset by peer")
        if self._then == "hang":
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


def completion(content: str = "", finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` as a provider streams it."""
    delta = {"content": content} if content else {}
    return {
        "id": "chatcmpl-unit",
        "object": "chat.completion.chunk",
        "model": CLOUD_MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def sse(stream: ScriptedStream, provider: str = "together") -> httpx.Response:
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream", "x-inference-provider": provider},
        stream=stream,
    )


@dataclass
class CloudScript:
    """What the mock router answers to chats; it records what reached it."""

    chat: Handler | None = None
    chats: list[httpx.Request] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/models"):
            return httpx.Response(200, json=CATALOG)
        self.chats.append(request)
        if self.chat is None:
            return httpx.Response(500, json={"error": "no chat expected in this test"})
        return await self.chat(request)


@dataclass
class ChatPath:
    service: ChatService
    engine: ScriptedEngine
    cloud: CloudScript
    ledger: BudgetLedger
    audit: AuditLog
    admission: AdmissionController
    client: RouterClient

    async def run(self, spec: ChatSpec, call: CallContext | None = None) -> list[ChatChunk]:
        stream = self.service.chat(spec, call or CallContext(client_id="app", request_id="r1"))
        async with contextlib.aclosing(stream):
            return [chunk async for chunk in stream]

    def reserved(self) -> int:
        """Budget reservations still open."""
        return self.ledger.usage(datetime.now(UTC)).reserved

    def spent_tokens(self) -> int:
        return self.ledger.usage(datetime.now(UTC)).day_tokens


def cloud_config(**overrides: Any) -> CloudConfig:
    base = CloudConfig(
        base_url=BASE_URL,
        model=CLOUD_MODEL,
        event_timeout_s=2.0,
        first_token_timeout_s=2.0,
        total_timeout_s=10.0,
    )
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def chat_path(tmp: Path, **cloud: Any) -> AsyncIterator[ChatPath]:
    """The chat path with a signed escalation policy and a live (mock) router."""
    fleet = ec.generate_private_key(ec.SECP256R1())
    policies = PolicyStore(tmp / "policy.signed", FleetKeyring([fleet.public_key()]))
    policies.install(sign_policy(POLICY, fleet))
    engine = ScriptedEngine(tmp)
    admission = AdmissionController(AdmissionConfig(), max_active=2)
    metrics = Metrics(version="test")
    script = CloudScript()
    client = RouterClient(
        cloud_config(**cloud),
        lambda: CLOUD_TOKEN,
        transport=httpx.MockTransport(script.handle),
    )
    connectivity = ConnectivityMonitor(client)
    await connectivity.probe_now()  # online, with the catalog's prices
    ledger = BudgetLedger(tmp / "budget.db")
    audit = AuditLog(tmp / "audit.db")
    service = ChatService(
        local=LocalChat(engine, admission=admission, metrics=metrics),
        policy=PolicySource(policies, LocalPolicyOverrides(), lambda: CREDENTIAL),
        cloud=CloudRoute(
            client=client,
            connectivity=connectivity,
            config=client.config,
            ledger=ledger,
            metrics=metrics,
        ),
        audit=AuditRecorder(audit),
    )
    try:
        yield ChatPath(service, engine, script, ledger, audit, admission, client)
    finally:
        await client.aclose()
        ledger.close()
        audit.close()
