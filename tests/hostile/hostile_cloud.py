"""Cloud faults on a real daemon escalating to the loopback stand-in router.

Public data asking for the large model goes to the cloud when it works; whatever the router
does (drip bytes forever, accept and never answer, fail, flap, present an untrusted TLS
certificate) every chat must end with a final answer from the cloud or the local model,
within its deadline, and the circuit breaker must open on repeated failures and close again
once the router recovers. Client deadlines shorter than the cloud's own timeouts still get
a local answer in time, and no budget reservation is left open at the end.
"""

from __future__ import annotations

import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemon_harness import RunningAgent
from escalation_box import escalating, escalation_policy
from fake_router import FakeRouter, Hang, Reply, Status
from hostile_common import Tally, engine_idle, hostile_config

from edge_agent.client import ChatOptions, Client, DataClass, RoutePreference
from edge_agent.config import AgentConfig

TOKEN = "hf_HOSTILEsentinel_0a1b2c3d4e5f6789"
_DEADLINE_S = 60.0  # a chat needing this long is hung (each fault resolves within ~2 s)

POLICY = escalation_policy(budget_scale=100)

# Short deadlines so each fault resolves in about a second; the breaker opens after two
# failures and tries again after 0.5 s (doubling to 1 s while trials fail).
FAST_CLOUD = dict(
    connect_timeout_s=1.0,
    read_timeout_s=2.0,
    write_timeout_s=1.0,
    pool_timeout_s=1.0,
    event_timeout_s=0.5,
    first_token_timeout_s=0.8,
    total_timeout_s=5.0,
    probe_interval_s=0.2,
    probe_timeout_s=0.5,
    probe_backoff_initial_s=0.05,
    probe_backoff_max_s=0.2,
    breaker_failure_threshold=2,
    breaker_open_s=0.5,
    breaker_max_open_s=1.0,
)


def escalating_config(
    tmp: Path, base_url: str, fleet: ec.EllipticCurvePrivateKey | None = None
) -> AgentConfig:
    """A box with a signed policy sending public data to the cloud and a sealed token."""
    return escalating(
        hostile_config(tmp),
        tmp,
        base_url,
        policy=POLICY,
        token=TOKEN,
        fleet=fleet,
        **FAST_CLOUD,
    )


def untrusted_tls_router(tmp: Path) -> FakeRouter:
    """The stand-in behind TLS with a self-signed certificate for 127.0.0.1 nobody trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "router.example")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / "router.pem", tmp / "router.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return FakeRouter(TOKEN, tls=context)


class Watch:
    """Samples the breaker in a thread so short open/half-open phases are seen."""

    def __init__(self, running: RunningAgent) -> None:
        self.running = running
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="breaker-watch", daemon=True)
        self._thread.start()

    def _state(self) -> str:
        async def read() -> str:
            return str(self.running.agent.connectivity.snapshot().breaker.value)

        return str(self.running.call(read()))

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            state = self._state()
            if not self.seen or self.seen[-1] != state:
                self.seen.append(state)

    def wait_for(self, state: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._state() == state:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def ask(
    running: RunningAgent, tally: Tally, what: str, deadline_s: float = _DEADLINE_S
) -> str | None:
    """One escalating chat; its provenance reason, or None when it did not end cleanly."""
    tally.cases += 1
    opts = ChatOptions(max_tokens=8, data_class=DataClass.PUBLIC, route=RoutePreference.LARGE_MODEL)
    started = time.monotonic()
    try:
        with Client(running.target) as client:
            chunks = list(client.chat([("user", "Hello?")], opts, timeout=deadline_s))
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            tally.fail("hung", f"{what}: no answer in {deadline_s:.1f} s")
        else:
            tally.fail("wrong_status", f"{what}: {exc.code().name} {exc.details()!r}")
        return None
    final = chunks[-1]
    reasons: dict[str, int] = tally.figures.setdefault("reasons", {})
    reason = final.provenance.decision_reason if final.provenance else "?"
    reasons[reason] = reasons.get(reason, 0) + 1
    slowest = max(tally.figures.get("slowest_chat_s", 0.0), time.monotonic() - started)
    tally.figures["slowest_chat_s"] = round(slowest, 2)
    if final.usage is None or final.usage.completion_tokens <= 0 or not final.finish_reason:
        tally.fail("wrong_status", f"{what}: the stream ended without a final answer")
    return reason


def run_cloud_faults(running: RunningAgent, router: FakeRouter, tally: Tally, rounds: int) -> None:
    """Healthy → slow-loris → breaker open → recovery → silent router → mid-stream drip →
    ``rounds`` rounds of flapping; each chat must end cleanly."""
    watch = Watch(running)
    try:
        _phases(running, router, tally, rounds, watch)
    finally:
        watch.close()
    tally.figures["breaker_states"] = _compress(watch.seen)
    busy: Any = engine_idle(running)
    if busy is not None:
        tally.fail("hung", f"the engine still holds requests: {busy}")
    _no_open_reservations(running, tally)


def _no_open_reservations(running: RunningAgent, tally: Tally) -> None:
    deadline = time.monotonic() + 5
    reserved = running.agent.ledger.usage(datetime.now(UTC)).reserved
    while reserved and time.monotonic() < deadline:
        time.sleep(0.05)
        reserved = running.agent.ledger.usage(datetime.now(UTC)).reserved
    tally.figures["open_reservations"] = reserved
    if reserved:
        tally.fail("leaks", f"{reserved} budget reservations left open")


def _expect(tally: Tally, cond: bool, what: str) -> None:
    if not cond:
        tally.fail("wrong_status", what)


def _phases(
    running: RunningAgent, router: FakeRouter, tally: Tally, rounds: int, watch: Watch
) -> None:
    running.call(running.agent.connectivity.probe_now())
    reason = ask(running, tally, "healthy")
    _expect(tally, reason is not None and reason.startswith("cloud."), f"healthy went {reason}")
    # Slow-loris: a byte every 50 ms, never a whole event; the idle deadline cuts it.
    router.on_chat(Reply(after=0, then="drip"))
    reason = ask(running, tally, "slow-loris")
    _expect(tally, reason == "local.cloud_failed_before_first_token", f"drip went {reason}")
    # The uplink goes down: failing probes open the breaker; chats stay local meanwhile.
    router.on_models(*[Status(503)] * 50)
    _expect(tally, watch.wait_for("open", 5), "the breaker did not open on repeated failures")
    sent = len(router.chat_requests())
    reason = ask(running, tally, "while open")
    _expect(tally, reason is not None and reason.startswith("local."), f"open went {reason}")
    _expect(tally, len(router.chat_requests()) == sent, "a request reached the router while open")
    # Recovery: probes succeed again, the breaker half-opens, a success closes it.
    with router._lock:
        router._models.clear()
    _expect(tally, watch.wait_for("closed", 15), "the breaker did not close after recovery")
    _wait_online(running)
    reason = ask(running, tally, "recovered")
    sent_after = len(router.chat_requests())
    _expect(tally, reason is not None and reason.startswith("cloud."), f"recovered went {reason}")
    _expect(tally, sent_after == sent + 1, "the recovered chat did not reach the router")
    # A router that accepts and never answers; then one that stalls after two words.
    router.on_chat(Hang())
    reason = ask(running, tally, "silent router")
    _expect(tally, reason == "local.cloud_failed_before_first_token", f"hang went {reason}")
    _wait_online(running)
    router.on_chat(Reply(after=2, then="drip"))
    reason = ask(running, tally, "mid-stream drip")
    _expect(tally, reason in ("local.cloud_failover", "local.cloud_failed_before_first_token")
            or (reason or "").startswith("local."), f"mid-stream drip went {reason}")  # fmt: skip
    # Flapping: the uplink fails and recovers over and over, in every way the stand-in knows.
    faults: list[Reply | Status | Hang] = [
        Status(503), Reply(), Hang(), Reply(then="cut", after=1), Status(502),
        Reply(then="malformed"), Reply(), Reply(then="eof"),
    ]  # fmt: skip
    for i in range(rounds):
        router.on_chat(faults[i % len(faults)])
        if i % 3 == 0:
            router.on_models(Status(503))
        ask(running, tally, f"flap {i}")
    with router._lock:
        router._chat.clear()
        router._models.clear()
    _expect(tally, watch.wait_for("closed", 15), "the breaker did not close after the flapping")
    _wait_online(running)
    reason = ask(running, tally, "after flapping")
    _expect(tally, reason is not None and reason.startswith("cloud."), f"final went {reason}")
    # Deadlines shorter than the cloud's own limits: silence after the headers, a slow
    # first byte, a drip; each must still end in an answer before the client gives up.
    for i, fault in enumerate(
        [Reply(after=0, then="hang"), Reply(first_byte_delay_s=5.0), Reply(after=1, then="drip")]
    ):
        _wait_online(running)
        router.on_chat(fault)
        ask(running, tally, f"short deadline {i}", deadline_s=1.5)
    router.reset()


def _wait_online(running: RunningAgent, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = running.call(running.agent.connectivity.probe_now())
        if snap.state == "online":
            return
        time.sleep(0.1)


def run_tls_failure(running: RunningAgent, router: FakeRouter, tally: Tally, cases: int) -> None:
    """The router presents a certificate nobody trusts: refused before any HTTP is sent."""
    for i in range(cases):
        reason = ask(running, tally, f"untrusted TLS {i}")
        _expect(tally, reason is not None and reason.startswith("local."), f"TLS went {reason}")
    snap = running.call(running.agent.connectivity.probe_now())
    tally.figures["tls_failure_kind"] = snap.last_failure_kind
    _expect(tally, snap.state == "offline", f"connectivity is {snap.state} behind a bad cert")
    # The handshake failed, so no request (and no bearer token) ever reached the server.
    if router.requests:
        tally.fail(
            "leaks", f"{len(router.requests)} HTTP requests passed an untrusted TLS handshake"
        )


def _compress(states: list[str]) -> str:
    return " → ".join(states[:12]) + (" …" if len(states) > 12 else "")
