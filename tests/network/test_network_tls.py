"""Real TLS/mTLS handshakes and role checks against grpc.aio servers on 127.0.0.1:0."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import AsyncIterator

import grpc
import pytest
from network_helpers import EchoInference, Pki, serve, strict_auth

from edge_agent._proto.edge_agent.v1 import (
    bundles_pb2,
    inference_pb2,
    inference_pb2_grpc,
    operator_pb2_grpc,
)
from edge_agent.errors import PermissionDenied
from edge_agent.rpc.auth import PUSHBACK_KEY, AuthInterceptor
from edge_agent.tls import (
    AuthConfig,
    Authenticator,
    IssuedCertificate,
    Listener,
    RateLimit,
    RateLimiter,
    TokenEntry,
    hash_token,
    new_token,
    pinned_channel_credentials,
)

CLIENT_TOKEN = new_token()
OPERATOR_TOKEN = new_token()
TOKENS = (
    TokenEntry(name="kiosk", role="client", sha256=CLIENT_TOKEN.sha256),
    TokenEntry(name="ops-bot", role="operator", sha256=OPERATOR_TOKEN.sha256),
)
TLS_ONLY = [Listener("127.0.0.1:0", "tls")]
MTLS_ONLY = [Listener("127.0.0.1:0", "mtls")]
BOTH = TLS_ONLY + MTLS_ONLY


def _creds(
    pki: Pki, cert: IssuedCertificate | None = None, roots: bytes | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=roots if roots is not None else pki.device.cert_pem,
        private_key=cert.key_pem if cert else None,
        certificate_chain=cert.cert_pem if cert else None,
    )


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _push(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    async def chunks() -> AsyncIterator[bundles_pb2.PushBundleRequest]:
        yield bundles_pb2.PushBundleRequest(chunk=b"abc")
        yield bundles_pb2.PushBundleRequest(chunk=b"de")

    stub = operator_pb2_grpc.OperatorStub(channel)
    reply = await stub.PushBundle(chunks(), metadata=metadata, timeout=10)
    return reply.outcome


async def _status(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    stub = inference_pb2_grpc.InferenceStub(channel)
    reply = await stub.GetStatus(inference_pb2.GetStatusRequest(), metadata=metadata, timeout=10)
    return reply.device_id


async def _code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def test_tls_handshake_with_the_device_certificate_as_root(pki: Pki) -> None:
    async with (
        serve(pki, strict_auth(tokens=TOKENS), TLS_ONLY) as running,
        grpc.aio.secure_channel(f"127.0.0.1:{running.port('tls')}", _creds(pki)) as channel,
    ):
        assert await _status(channel, _bearer(CLIENT_TOKEN.token)) == "token:kiosk:client"


async def test_tls_handshake_fails_when_the_client_trusts_another_ca(pki: Pki) -> None:
    wrong_roots = (pki.root / "rogue-ca" / "ca.pem").read_bytes()
    async with (
        serve(pki, strict_auth(tokens=TOKENS), TLS_ONLY) as running,
        grpc.aio.secure_channel(
            f"127.0.0.1:{running.port('tls')}", _creds(pki, roots=wrong_roots)
        ) as channel,
    ):
        code = await _code_of(_status(channel, _bearer(CLIENT_TOKEN.token)))
        assert code == grpc.StatusCode.UNAVAILABLE


async def test_mtls_operator_certificate_may_push_a_bundle(pki: Pki) -> None:
    async with (
        serve(pki, strict_auth(), MTLS_ONLY) as running,
        grpc.aio.secure_channel(
            f"127.0.0.1:{running.port('mtls')}", _creds(pki, pki.operator)
        ) as channel,
    ):
        assert await _push(channel) == "cert:fleet-console:operator:5"
        # The operator role includes the client role.
        assert await _status(channel) == "cert:fleet-console:operator"


async def test_mtls_client_certificate_is_denied_the_operator_service(pki: Pki) -> None:
    async with (
        serve(pki, strict_auth(), MTLS_ONLY) as running,
        grpc.aio.secure_channel(
            f"127.0.0.1:{running.port('mtls')}", _creds(pki, pki.client)
        ) as channel,
    ):
        assert await _status(channel) == "cert:hmi-3:client"
        assert await _code_of(_push(channel)) == grpc.StatusCode.PERMISSION_DENIED


async def test_mtls_port_refuses_untrusted_or_missing_certificates(pki: Pki) -> None:
    async with serve(pki, strict_auth(tokens=TOKENS), MTLS_ONLY) as running:
        target = f"127.0.0.1:{running.port('mtls')}"
        async with grpc.aio.secure_channel(target, _creds(pki, pki.rogue_operator)) as channel:
            assert await _code_of(_push(channel)) == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.secure_channel(target, _creds(pki)) as channel:
            code = await _code_of(_status(channel, _bearer(CLIENT_TOKEN.token)))
            assert code == grpc.StatusCode.UNAVAILABLE


async def test_revoked_certificate_is_refused(pki: Pki) -> None:
    from cryptography import x509

    serial = x509.load_pem_x509_certificate(pki.operator.cert_pem).serial_number
    async with (
        serve(pki, strict_auth(revoked_cert_serials=frozenset({serial})), MTLS_ONLY) as running,
        grpc.aio.secure_channel(
            f"127.0.0.1:{running.port('mtls')}", _creds(pki, pki.operator)
        ) as channel,
    ):
        assert await _code_of(_push(channel)) == grpc.StatusCode.UNAUTHENTICATED


async def test_no_credentials_on_an_operator_method_is_unauthenticated(pki: Pki) -> None:
    async with (
        serve(pki, strict_auth(tokens=TOKENS), TLS_ONLY) as running,
        grpc.aio.secure_channel(f"127.0.0.1:{running.port('tls')}", _creds(pki)) as channel,
    ):
        assert await _code_of(_push(channel)) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code_of(_status(channel)) == grpc.StatusCode.UNAUTHENTICATED


async def test_client_token_can_chat_but_cannot_push_a_bundle(pki: Pki) -> None:
    async with (
        serve(pki, strict_auth(tokens=TOKENS), TLS_ONLY) as running,
        grpc.aio.secure_channel(f"127.0.0.1:{running.port('tls')}", _creds(pki)) as channel,
    ):
        stub = inference_pb2_grpc.InferenceStub(channel)
        deltas = [
            r.delta
            async for r in stub.Chat(
                inference_pb2.ChatRequest(), metadata=_bearer(CLIENT_TOKEN.token), timeout=10
            )
        ]
        assert deltas == ["token:kiosk:client"] * 2
        code = await _code_of(_push(channel, _bearer(CLIENT_TOKEN.token)))
        assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_operator_token_works_only_where_configured(pki: Pki) -> None:
    auth = strict_auth(tokens=TOKENS, allow_operator_tokens=True)
    async with (
        serve(pki, auth, TLS_ONLY) as running,
        grpc.aio.secure_channel(f"127.0.0.1:{running.port('tls')}", _creds(pki)) as channel,
    ):
        assert await _push(channel, _bearer(OPERATOR_TOKEN.token)) == "token:ops-bot:operator:5"


@pytest.mark.parametrize(
    "header",
    ["Bearer eat_not-a-real-token", "Bearer ", "Basic dXNlcjpwdw==", "Bearer " + "x" * 300],
)
async def test_bad_token_is_unauthenticated(pki: Pki, header: str) -> None:
    async with (
        serve(pki, strict_auth(tokens=TOKENS), TLS_ONLY) as running,
        grpc.aio.secure_channel(f"127.0.0.1:{running.port('tls')}", _creds(pki)) as channel,
    ):
        code = await _code_of(_status(channel, (("authorization", header),)))
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_valid_certificate_with_a_bad_token_is_unauthenticated(pki: Pki) -> None:
    async with (
        serve(pki, strict_auth(tokens=TOKENS), MTLS_ONLY) as running,
        grpc.aio.secure_channel(
            f"127.0.0.1:{running.port('mtls')}", _creds(pki, pki.operator)
        ) as channel,
    ):
        code = await _code_of(_status(channel, _bearer("eat_wrong")))
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_rate_limit_answers_resource_exhausted_with_pushback(pki: Pki) -> None:
    auth = strict_auth(tokens=TOKENS, client_rate=RateLimit(requests_per_s=1.0, burst=2))
    async with (
        serve(pki, auth, BOTH) as running,
        grpc.aio.secure_channel(f"127.0.0.1:{running.port('tls')}", _creds(pki)) as channel,
    ):
        meta = _bearer(CLIENT_TOKEN.token)
        await _status(channel, meta)
        await _status(channel, meta)
        stub = inference_pb2_grpc.InferenceStub(channel)
        call = stub.GetStatus(inference_pb2.GetStatusRequest(), metadata=meta, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(info.value.trailing_metadata() or ())
        pushback = int(trailers[PUSHBACK_KEY])
        assert 1 <= pushback <= 1000
        # Another client has its own bucket.
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{running.port('mtls')}", _creds(pki, pki.client)
        ) as other:
            assert await _status(other) == "cert:hmi-3:client"


async def test_unix_socket_caller_is_the_local_admin(pki: Pki) -> None:
    plan = [Listener(f"unix:{pki.tls.admin_socket}", "unix")]
    async with serve(pki, strict_auth(), plan) as running:
        mode = stat.S_IMODE(os.stat(pki.tls.admin_socket).st_mode)
        assert mode == 0o660
        async with grpc.aio.insecure_channel(running.unix_address()) as channel:
            assert await _push(channel) == "unix:local-admin:admin:5"


async def test_anonymous_loopback_is_a_client_only_when_allowed(pki: Pki) -> None:
    plan = [Listener("127.0.0.1:0", "plaintext")]
    async with serve(pki, strict_auth(allow_anonymous_loopback=True), plan) as running:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{running.port('plaintext')}")
        async with ch:
            assert await _status(ch) == "loopback-anonymous:loopback:client"
            assert await _code_of(_push(ch)) == grpc.StatusCode.PERMISSION_DENIED
    async with serve(pki, strict_auth(), plan) as running:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{running.port('plaintext')}")
        async with ch:
            assert await _code_of(_status(ch)) == grpc.StatusCode.UNAUTHENTICATED


async def test_pinned_fingerprint_connects_and_a_mismatch_is_refused(pki: Pki) -> None:
    async with serve(pki, strict_auth(tokens=TOKENS), BOTH) as running:
        port = running.port("mtls")
        pinned = pinned_channel_credentials(
            "127.0.0.1",
            port,
            pki.device.fingerprint_colons,
            client_cert_pem=pki.operator.cert_pem,
            client_key_pem=pki.operator.key_pem,
        )
        assert pinned.options == [("grpc.ssl_target_name_override", "testbox")]
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", pinned.credentials, options=pinned.options
        ) as channel:
            assert await _push(channel) == "cert:fleet-console:operator:5"
        # The token port, with the fingerprint as mDNS publishes it (no colons).
        token_port = running.port("tls")
        pinned = pinned_channel_credentials("127.0.0.1", token_port, pki.device.fingerprint)
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{token_port}", pinned.credentials, options=pinned.options
        ) as channel:
            assert await _status(channel, _bearer(CLIENT_TOKEN.token)) == "token:kiosk:client"
        wrong = "00" * 31 + "01"
        with pytest.raises(PermissionDenied, match="pinned fingerprint"):
            pinned_channel_credentials("127.0.0.1", token_port, wrong)


async def test_public_health_needs_no_credentials(pki: Pki) -> None:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    auth = strict_auth()
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(Authenticator.from_config(pki.tls, auth), RateLimiter(auth))]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    inference_pb2_grpc.add_InferenceServicer_to_server(EchoInference(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert await _code_of(_status(channel)) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)


def test_hash_is_all_the_box_keeps() -> None:
    assert hash_token(CLIENT_TOKEN.token) == CLIENT_TOKEN.sha256
    assert CLIENT_TOKEN.token not in repr(CLIENT_TOKEN)
    assert CLIENT_TOKEN.sha256 not in repr(TOKENS[0])


async def test_lan_address_gets_tls_and_no_anonymous_access(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    from edge_agent.discovery import local_addresses
    from edge_agent.tls import listen_plan

    lan = [a for a in local_addresses() if "." in a]
    if not lan:
        pytest.skip("this machine has no non-loopback IPv4 address")
    tls = dataclasses.replace(pki.tls, mtls_port=0, admin_socket_enabled=False)
    plan = listen_plan(tls, [f"{lan[0]}:0"])
    assert [p.security for p in plan] == ["tls", "mtls"]
    # Default auth: anonymous loopback on, yet a LAN peer must still authenticate.
    auth = AuthConfig(tokens=TOKENS)
    caplog.set_level("INFO", logger="edge_agent.auth")
    async with serve(pki, auth, plan, tls=tls) as running:
        target = f"{lan[0]}:{running.port('tls')}"
        async with grpc.aio.insecure_channel(target) as plain:
            assert await _code_of(_status(plain)) == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.secure_channel(
            target, _creds(pki), options=[("grpc.ssl_target_name_override", "testbox")]
        ) as channel:
            assert await _code_of(_status(channel)) == grpc.StatusCode.UNAUTHENTICATED
            bad = await _code_of(_status(channel, _bearer(CLIENT_TOKEN.token + "x")))
            assert bad == grpc.StatusCode.UNAUTHENTICATED
            assert await _status(channel, _bearer(CLIENT_TOKEN.token)) == "token:kiosk:client"
        async with grpc.aio.secure_channel(
            f"{lan[0]}:{running.port('mtls')}",
            _creds(pki, pki.operator),
            options=[("grpc.ssl_target_name_override", "testbox")],
        ) as channel:
            assert await _push(channel) == "cert:fleet-console:operator:5"
    assert "refused" in caplog.text
    assert CLIENT_TOKEN.token not in caplog.text
