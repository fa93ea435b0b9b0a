"""The real `edge-agent serve` process: SIGTERM drains streams and exits 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from daemon_harness import DEMO_MODEL
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent._proto.edge_agent.v1 import inference_pb2_grpc as pb_grpc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, grace_s: float) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[paths]\nstate_dir = "state"\nruntime_dir = "run"\n'
        f'[server]\nlisten = ["127.0.0.1:{port}"]\ngrace_s = {grace_s}\n'
        f'[engine]\nmodel_dir = "{DEMO_MODEL}"\n'
        "[metrics]\nport = 0\n"
        # These tests are about stopping, not auth: open loopback as the demo does.
        "[auth]\nallow_anonymous_loopback = true\n"
    )
    # A file, not a pipe: a chatty daemon must never block on a full pipe nobody reads.
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "serve", "--config", str(config)],
        stderr=log,
    )
    log.close()
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "daemon did not become ready"
            time.sleep(0.1)
    return proc, target


def test_sigterm_drains_in_flight_streams_and_exits_zero(tmp_path: Path) -> None:
    proc, target = _serve(tmp_path, grace_s=20)
    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.InferenceStub(ch)
            request = pb.ChatRequest(
                messages=[pb.ChatMessage(role="user", content="Tell a story.")],
                max_tokens=80,
                min_tokens=80,
            )
            call = stub.Chat(request, timeout=60)
            first = next(call)
            proc.send_signal(signal.SIGTERM)
            rest = list(call)  # the stream in flight finishes within the grace
            assert rest[-1].usage.completion_tokens == 80
            assert first.delta or rest
            # New work is refused once stopping began (health says so first).
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 10
            while True:
                try:
                    serving = (
                        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                        == health_pb2.HealthCheckResponse.SERVING
                    )
                except grpc.RpcError as exc:
                    # The drain may already be over and the listener closed.
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    break
                if not serving:
                    break
                assert time.monotonic() < deadline, "health never left SERVING"
                time.sleep(0.01)
            try:
                list(stub.Chat(request, timeout=5))
                refused = False
            except grpc.RpcError as exc:
                refused = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            assert refused
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_with_short_grace_cuts_long_streams_and_still_exits_zero(tmp_path: Path) -> None:
    proc, target = _serve(tmp_path, grace_s=0.5)
    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.InferenceStub(ch)
            request = pb.ChatRequest(
                messages=[pb.ChatMessage(role="user", content="Tell a story.")],
                max_tokens=1500,
                min_tokens=1500,
            )
            call = stub.Chat(request, timeout=60)
            next(call)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                list(call)
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sighup_reloads_without_dropping_streams(tmp_path: Path) -> None:
    proc, target = _serve(tmp_path, grace_s=5)
    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.InferenceStub(ch)
            request = pb.ChatRequest(
                messages=[pb.ChatMessage(role="user", content="Tell a story.")],
                max_tokens=120,
                min_tokens=120,
            )
            call = stub.Chat(request, timeout=60)
            next(call)
            # A reloadable change (log level) and a broken edit must both keep the box serving.
            config = tmp_path / "agent.toml"
            config.write_text(config.read_text() + '[logging]\nlevel = "DEBUG"\n')
            proc.send_signal(signal.SIGHUP)
            rest = list(call)
            assert rest[-1].usage.completion_tokens == 120
            health = health_pb2_grpc.HealthStub(ch)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            config.write_text(config.read_text() + "[nonsense]\n")
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            answer = list(stub.Chat(request, timeout=60))
            assert answer[-1].usage.completion_tokens == 120
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        err = (tmp_path / "daemon.log").read_text()
        assert "reloaded" in err
        assert "reload refused" in err and "nonsense" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
