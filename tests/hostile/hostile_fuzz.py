"""Fuzzing the gRPC surface over real channels: generated requests for every RPC and field,
operator RPCs with and without the operator role, raw malformed bytes, oversized frames.

Each case must end with a status from the RPC's expected set (never UNKNOWN, never
INTERNAL), with details that name no path, exception class or stack frame; the daemon must
still answer health after every case and a real chat every ``chat_every`` cases.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from daemon_harness import RunningAgent
from hostile_common import NEVER, Tally, admin_target, health_ok, leaked_detail
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge_agent._proto.edge_agent.v1 import bundles_pb2, inference_pb2, policy_pb2
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as inference_grpc
from edge_agent._proto.edge_agent.v1 import operator_pb2_grpc as operator_grpc

C = grpc.StatusCode
_FIELD_FIRST = re.compile(r"^[a-z_][a-z0-9_.\[\]]*: ")
_TIMEOUT_S = 60.0  # far beyond any honest answer: hitting it means a hung call

# -- strategies -----------------------------------------------------------------------------------

_chars = st.characters(exclude_categories=["Cs"])  # protobuf strings must be UTF-8
_small_text = st.text(_chars, max_size=40)
_text = st.one_of(
    _small_text,
    st.sampled_from(["", " ", "\x00", "hello", "../../etc/passwd", "{{ raise }}", "\u202e"]),
    st.text(_chars, min_size=1000, max_size=5000),
    st.builds(lambda n: "x" * n, st.sampled_from([65_535, 65_536, 70_000, 300_000])),
)
_int32 = st.integers(-(2**31), 2**31 - 1)
_int64 = st.integers(-(2**63), 2**63 - 1)
_float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_json_schema = st.one_of(
    _small_text,
    st.just('{"type": "object", "properties": {"a": {"type": "integer"}}}'),
    st.recursive(
        st.none() | st.booleans() | st.integers() | _small_text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_small_text, inner, max_size=3),
        max_leaves=8,
    ).map(json.dumps),
)


def _message() -> st.SearchStrategy[inference_pb2.ChatMessage]:
    role = st.one_of(st.sampled_from(["user", "system", "assistant"]), _small_text)
    return st.builds(inference_pb2.ChatMessage, role=role, content=_text)


def _chat_request() -> st.SearchStrategy[inference_pb2.ChatRequest]:
    def build(messages: list[Any], user_last: bool, extra: dict[str, Any]) -> Any:
        if user_last:
            messages = [*messages, inference_pb2.ChatMessage(role="user", content="Hi")]
        fields = {k: v for k, v in extra.items() if v is not None}
        return inference_pb2.ChatRequest(messages=messages, **fields)

    fmt = st.builds(
        inference_pb2.ResponseFormat,
        type=st.one_of(st.integers(0, 3), _int32),
        json_schema=_json_schema,
    )
    extra = st.fixed_dictionaries(
        {},
        optional={
            "model": _text,
            "max_tokens": st.one_of(st.integers(-2, 8), _int32),
            "temperature": st.one_of(st.floats(0, 2, width=32), _float32),
            "top_p": st.one_of(st.floats(0, 1, width=32), _float32),
            "top_k": st.one_of(st.integers(-1, 1001), _int32),
            "seed": st.one_of(st.integers(0, 10), _int64),
            "stop": st.lists(_text, max_size=6),
            "response_format": fmt,
            "data_class": st.one_of(st.integers(0, 5), _int32),
            "route": st.one_of(st.integers(0, 3), _int32),
            "priority": st.one_of(st.integers(-11, 11), _int32),
        },
    )
    many = st.builds(lambda n: [inference_pb2.ChatMessage(role="user", content="a")] * n,
                     st.sampled_from([256, 257, 2000]))  # fmt: skip
    messages = st.one_of(st.lists(_message(), max_size=5), many)
    return st.builds(build, messages, st.booleans(), extra)


def _operator_case() -> st.SearchStrategy[tuple[str, Any]]:
    blob = st.one_of(
        st.binary(max_size=2048), st.just(b""), st.binary(min_size=70_000, max_size=90_000)
    )
    upload_id = st.one_of(
        _small_text, st.sampled_from(["", "..", "../../x", "/etc/passwd", "a" * 129, "ok-id_1.2"])
    )
    header = st.builds(
        bundles_pb2.BundleUploadHeader,
        upload_id=upload_id,
        total_size=st.one_of(st.integers(0, 5000), st.integers(0, 2**64 - 1)),
        sha256=st.one_of(_small_text, st.binary(min_size=32, max_size=32).map(lambda b: b.hex())),
        offset=st.one_of(st.integers(0, 100), st.integers(0, 2**64 - 1)),
        activate=st.booleans(),
    )
    item = st.one_of(
        header.map(lambda h: bundles_pb2.PushBundleRequest(header=h)),
        st.binary(max_size=4096).map(lambda b: bundles_pb2.PushBundleRequest(chunk=b)),
        st.just(bundles_pb2.PushBundleRequest()),
    )
    return st.one_of(
        blob.map(lambda b: ("PushPolicy", policy_pb2.PushPolicyRequest(signed_policy=b))),
        blob.map(lambda b: ("PushCredentials", policy_pb2.PushCredentialsRequest(sealed_envelope=b))),
        upload_id.map(lambda u: ("GetUploadOffset", bundles_pb2.GetUploadOffsetRequest(upload_id=u))),
        st.just(("ListBundles", bundles_pb2.ListBundlesRequest())),
        st.just(("RollbackBundle", bundles_pb2.RollbackBundleRequest())),
        st.just(("GetDeviceIdentity", policy_pb2.GetDeviceIdentityRequest())),
        st.lists(item, max_size=6).map(lambda items: ("PushBundle", items)),
    )  # fmt: skip


_METHODS: dict[str, tuple[str, Callable[..., Any]]] = {
    # name: (kind, a valid message factory for truncation)
    "/edge_agent.v1.Inference/Chat": (
        "unary_stream",
        lambda: inference_pb2.ChatRequest(
            messages=[inference_pb2.ChatMessage(role="user", content="Hello there")],
            max_tokens=2,
            stop=["zz"],
            response_format=inference_pb2.ResponseFormat(
                type=inference_pb2.RESPONSE_FORMAT_TYPE_TEXT
            ),
        ),
    ),
    "/edge_agent.v1.Inference/GetStatus": ("unary_unary", inference_pb2.GetStatusRequest),
    "/edge_agent.v1.Inference/ListModels": ("unary_unary", inference_pb2.ListModelsRequest),
    "/edge_agent.v1.Operator/PushPolicy": (
        "unary_unary",
        lambda: policy_pb2.PushPolicyRequest(signed_policy=b"x" * 40),
    ),
    "/edge_agent.v1.Operator/PushCredentials": (
        "unary_unary",
        lambda: policy_pb2.PushCredentialsRequest(sealed_envelope=b"y" * 40),
    ),
    "/edge_agent.v1.Operator/GetUploadOffset": (
        "unary_unary",
        lambda: bundles_pb2.GetUploadOffsetRequest(upload_id="abc"),
    ),
    "/edge_agent.v1.Operator/PushBundle": (
        "stream_unary",
        lambda: bundles_pb2.PushBundleRequest(
            header=bundles_pb2.BundleUploadHeader(upload_id="u1", total_size=10, sha256="ab")
        ),
    ),
    "/grpc.health.v1.Health/Check": ("unary_unary", lambda: b""),
}

# -- expected outcomes ----------------------------------------------------------------------------

_CHAT_OK = {C.OK, C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED, C.FAILED_PRECONDITION, C.NOT_FOUND}
_ADMIN_OK: dict[str, set[grpc.StatusCode]] = {
    "PushPolicy": {C.INVALID_ARGUMENT, C.FAILED_PRECONDITION},
    "PushCredentials": {C.INVALID_ARGUMENT, C.FAILED_PRECONDITION},
    "GetUploadOffset": {C.OK, C.INVALID_ARGUMENT},
    "ListBundles": {C.OK},
    "RollbackBundle": {C.FAILED_PRECONDITION},
    "GetDeviceIdentity": {C.OK},
    "PushBundle": {C.INVALID_ARGUMENT, C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED, C.OUT_OF_RANGE},
}


def _judge(
    tally: Tally, what: str, code: grpc.StatusCode, details: str, allowed: set[grpc.StatusCode]
) -> None:
    tally.cases += 1
    codes = tally.figures.setdefault("codes", {})
    codes[code.name] = codes.get(code.name, 0) + 1
    if code == C.DEADLINE_EXCEEDED:
        tally.fail("hung", f"{what}: no answer within {_TIMEOUT_S:.0f} s")
    elif code in NEVER or code not in allowed:
        tally.fail("wrong_status", f"{what}: {code.name} {details[:120]!r}")
    leaked = leaked_detail(details)
    if leaked:
        tally.fail("leaks", f"{what}: {code.name} details reveal {leaked!r}: {details[:120]!r}")
    if code == C.INVALID_ARGUMENT and not _FIELD_FIRST.match(details):
        tally.fail("wrong_status", f"{what}: INVALID_ARGUMENT does not name a field: {details!r}")


def _outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return C.OK, ""


def _first_two(responses: Iterator[Any]) -> None:
    """Read up to two answers, then cancel: the fuzzer proves acceptance, not generation."""
    for i, _ in enumerate(responses):
        if i >= 1:
            responses.cancel()  # type: ignore[attr-defined]
            return


class _Alive:
    """After every case: health; every ``chat_every`` cases: a real chat answers."""

    def __init__(self, running: RunningAgent, channel: grpc.Channel, chat_every: int) -> None:
        self.running, self.channel, self.chat_every = running, channel, chat_every
        self.restarts = running.agent.engine.status().restarts
        self.count = 0

    def check(self, tally: Tally, what: str) -> None:
        self.count += 1
        if not health_ok(self.channel):
            tally.fail("crashes", f"health not SERVING after {what}")
        restarts = self.running.agent.engine.status().restarts
        if restarts != self.restarts:
            self.restarts = restarts
            tally.fail("crashes", f"the engine worker restarted after {what}")
        if self.count % self.chat_every == 0:
            self.chat(tally, what)

    def chat(self, tally: Tally, what: str) -> None:
        stub = inference_grpc.InferenceStub(self.channel)
        request = inference_pb2.ChatRequest(
            messages=[inference_pb2.ChatMessage(role="user", content="Still there?")], max_tokens=2
        )
        try:
            final = list(stub.Chat(request, timeout=_TIMEOUT_S))[-1]
            if final.usage.completion_tokens <= 0:
                tally.fail("crashes", f"an empty answer after {what}")
        except grpc.RpcError as exc:
            tally.fail("crashes", f"a valid chat failed after {what}: {exc.code().name}")


_SETTINGS = dict(
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def fuzz_inference(running: RunningAgent, tally: Tally, cases: int, chat_every: int = 25) -> None:
    """Generated ChatRequests, plus ListModels and GetStatus, as the anonymous loopback client."""
    with grpc.insecure_channel(running.target) as channel:
        stub = inference_grpc.InferenceStub(channel)
        alive = _Alive(running, channel, chat_every)

        @settings(max_examples=cases, **_SETTINGS)  # type: ignore[arg-type]
        @given(request=_chat_request(), unary=st.integers(0, 19))
        def one(request: inference_pb2.ChatRequest, unary: int) -> None:
            if unary == 0:
                code, details = _outcome(
                    lambda: stub.GetStatus(inference_pb2.GetStatusRequest(), timeout=_TIMEOUT_S)
                )
                _judge(tally, "GetStatus", code, details, {C.OK})
            elif unary == 1:
                code, details = _outcome(
                    lambda: stub.ListModels(inference_pb2.ListModelsRequest(), timeout=_TIMEOUT_S)
                )
                _judge(tally, "ListModels", code, details, {C.OK})
            code, details = _outcome(lambda: _first_two(stub.Chat(request, timeout=_TIMEOUT_S)))
            _judge(tally, "Chat", code, details, _CHAT_OK)
            alive.check(tally, "Chat")

        one()
        alive.chat(tally, "the inference fuzz")


def _operator_call(stub: operator_grpc.OperatorStub, name: str, request: Any) -> Any:
    if name == "PushBundle":
        return stub.PushBundle(iter(request), timeout=_TIMEOUT_S)
    return getattr(stub, name)(request, timeout=_TIMEOUT_S)


def fuzz_operator(running: RunningAgent, tally: Tally, cases: int, chat_every: int = 50) -> None:
    """Generated Operator requests: denied on loopback (client role), judged on the admin socket."""
    with (
        grpc.insecure_channel(running.target) as loopback,
        grpc.insecure_channel(admin_target(running)) as admin,
    ):
        as_client = operator_grpc.OperatorStub(loopback)
        as_admin = operator_grpc.OperatorStub(admin)
        alive = _Alive(running, loopback, chat_every)
        private = ("PRIVATE KEY",)

        @settings(max_examples=cases, **_SETTINGS)  # type: ignore[arg-type]
        @given(case=_operator_case())
        def one(case: tuple[str, Any]) -> None:
            name, request = case
            code, details = _outcome(lambda: _operator_call(as_client, name, request))
            _judge(tally, f"{name} (client role)", code, details, {C.PERMISSION_DENIED})
            reply: list[Any] = []
            code, details = _outcome(lambda: reply.append(_operator_call(as_admin, name, request)))
            _judge(tally, f"{name} (admin)", code, details, _ADMIN_OK[name])
            if reply and leaked_detail(str(reply[0]), private):
                tally.fail("leaks", f"{name} answered with a private key or internals")
            alive.check(tally, name)

        one()
        alive.chat(tally, "the operator fuzz")


def _raw_call(channel: grpc.Channel, method: str, payload: bytes) -> None:
    kind = _METHODS[method][0]
    ident: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
    factory = getattr(channel, kind)(method, request_serializer=ident, response_deserializer=ident)
    if kind == "unary_stream":
        _first_two(factory(payload, timeout=_TIMEOUT_S))
    elif kind == "stream_unary":
        factory(iter([payload, payload[: len(payload) // 2]]), timeout=_TIMEOUT_S)
    else:
        factory(payload, timeout=_TIMEOUT_S)


def _serialized(method: str) -> bytes:
    message = _METHODS[method][1]()
    return message if isinstance(message, bytes) else message.SerializeToString()


def fuzz_raw(running: RunningAgent, tally: Tally, cases: int, chat_every: int = 25) -> None:
    """Malformed, truncated and garbage-suffixed protobuf bytes to every kind of method."""
    targets = {"loopback": running.target, "admin": admin_target(running)}
    channels = {name: grpc.insecure_channel(t) for name, t in targets.items()}
    try:
        alive = _Alive(running, channels["loopback"], chat_every)
        mutation = st.one_of(
            st.binary(max_size=512).map(lambda b: ("garbage", b)),
            st.floats(0, 1).map(lambda f: ("truncate", f)),
            st.binary(min_size=1, max_size=64).map(lambda b: ("append", b)),
            st.integers(0, 4095).map(lambda bit: ("flip", bit)),
        )

        @settings(max_examples=cases, **_SETTINGS)  # type: ignore[arg-type]
        @given(method=st.sampled_from(sorted(_METHODS)), where=st.sampled_from(sorted(targets)),
               mutation=mutation)  # fmt: skip
        def one(method: str, where: str, mutation: tuple[str, Any]) -> None:
            valid = _serialized(method)
            kind, arg = mutation
            if kind == "garbage":
                payload = arg
            elif kind == "truncate":
                payload = valid[: int(len(valid) * arg)]
            elif kind == "append":
                payload = valid + arg
            else:
                flipped = bytearray(valid or b"\x00")
                flipped[(arg // 8) % len(flipped)] ^= 1 << (arg % 8)
                payload = bytes(flipped)
            code, details = _outcome(lambda: _raw_call(channels[where], method, payload))
            if method.startswith("/edge_agent.v1.Operator/") and where == "loopback":
                allowed = {C.PERMISSION_DENIED}
            else:
                # A mutation may still parse (then the RPC's own answers apply).
                allowed = _CHAT_OK | {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.OUT_OF_RANGE}
            _judge(tally, f"raw {method} via {where} ({kind})", code, details, allowed)
            alive.check(tally, f"raw {method}")

        one()
        alive.chat(tally, "the raw-bytes fuzz")
    finally:
        for ch in channels.values():
            ch.close()


def fuzz_oversized(running: RunningAgent, tally: Tally, cases: int) -> None:
    """Messages beyond server.max_message_bytes: RESOURCE_EXHAUSTED, and the daemon carries on."""
    limit = running.agent.config.server.max_message_bytes
    with (
        grpc.insecure_channel(running.target) as loopback,
        grpc.insecure_channel(admin_target(running)) as admin,
    ):
        alive = _Alive(running, loopback, 1)
        for i in range(cases):
            method = sorted(_METHODS)[i % len(_METHODS)]
            channel = admin if i % 2 else loopback
            payload = hashlib.sha256(b"%d" % i).digest() * ((limit + 4096 * (i + 1)) // 32)
            code, details = _outcome(lambda: _raw_call(channel, method, payload))  # noqa: B023
            allowed = {C.RESOURCE_EXHAUSTED}
            if channel is loopback and ".Operator/" in method:
                # A client stream is authorised before its first message is read.
                allowed.add(C.PERMISSION_DENIED)
            _judge(tally, f"oversized {method}", code, details, allowed)
            alive.check(tally, f"oversized {method}")
