"""Air-gapped means zero packets: the real daemon in a namespace whose only route is a sink.

Two daemons (`edge-agent serve`, demo model) run side by side for over a minute in one
network namespace: one with ``[policy] air_gapped = true``, one with escalation allowed but
no credential. Through start, streamed chats over TCP, a signed bundle activation and a
clean stop, the sink on the namespace's only route must record no DNS query, no TCP
connection attempt, no packet at all. onnxruntime's telemetry tries to reach Microsoft
about 10 s after the first session (docs/SECURITY.md); a minute covers it several times.
The same sink, asked to resolve and connect from inside, records both (the positive
control): a silent sink proves nothing.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_fixtures import Fleet, signed_model_archive
from daemon_harness import DEMO_MODEL
from sealed_net import SealedNet, fresh_namespace, missing_tools, prove_sink_sees, require

from edge_agent._offline import PHONE_HOME_SWITCHES
from edge_agent._operator_cli import OperatorTarget
from edge_agent.bundles._push_client import push_archive
from edge_agent.client import ChatOptions, Client
from edge_agent.config import load_config

RUN_S = 62.0
TOKEN = "egress-test-token"
EDGE_AGENT = str(Path(sys.executable).with_name("edge-agent"))

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def sealed() -> Iterator[SealedNet]:
    require(missing_tools(), "the egress proof")
    with fresh_namespace() as net:
        yield net


def _config(folder: Path, port: int, *, air_gapped: bool) -> Path:
    folder.mkdir(parents=True)
    path = folder / "agent.toml"
    path.write_text(
        f'[paths]\nstate_dir = "state"\nruntime_dir = "run"\n'
        f'[server]\nlisten = ["127.0.0.1:{port}"]\n'
        f'[engine]\nmodel_dir = "{DEMO_MODEL}"\n'
        "[metrics]\nport = 0\n"
        f"[policy]\nair_gapped = {'true' if air_gapped else 'false'}\n"
    )
    return path


def _box_environment(home: Path) -> dict[str, str]:
    """The environment of a daemon on a box: onnxruntime's telemetry keeps quiet on a CI
    runner (CI=true, a moved XDG cache: seen here), so those go, or this proof would pass
    even without our switches (the daemon and worker set them themselves)."""
    quiet = {"CI", "XDG_CACHE_HOME", *PHONE_HOME_SWITCHES}
    return {k: v for k, v in os.environ.items() if k not in quiet} | {"HOME": str(home)}


def _wait_serving(admin: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with Client(admin) as client:
                if client.status().engine.state == "ready":
                    return
        except Exception:
            time.sleep(0.3)
    raise AssertionError(f"daemon not ready: {log.read_text()[-3000:]}")


def _chat_over_tcp(net: SealedNet, port: int) -> str:
    """A streamed chat from inside the namespace, over the daemon's TCP listener."""
    proc = subprocess.run(
        [
            *net.enter,
            EDGE_AGENT,
            "chat",
            "Name a colour.",
            "--max-tokens",
            "12",
            "-v",
            "--target",
            f"127.0.0.1:{port}",
            "--token",
            TOKEN,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr  # -v prints "[stop; P+C tokens; local: MODEL VERSION on cpu]" there


def test_daemons_send_nothing_out_air_gapped_or_not(sealed: SealedNet, tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    home = tmp_path / "home"  # onnxruntime's telemetry queue would appear under it
    home.mkdir()
    boxes = {"air-gapped": (50051, True), "no-credential": (50052, False)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    admins: dict[str, str] = {}
    with sealed.capture() as capture:
        for name, (port, air_gapped) in boxes.items():
            path = _config(tmp_path / name, port, air_gapped=air_gapped)
            # A client token, so the TCP chats go through the real authentication.
            digest = hashlib.sha256(TOKEN.encode()).hexdigest()
            with path.open("a") as f:
                f.write(f"[[auth.tokens]]\nname = 'egress'\nrole = 'client'\nsha256 = '{digest}'\n")
            config = load_config(path)
            fleet.trust(config.bundles.paths(config.paths.state_dir).trust_store, "ops")
            admins[name] = f"unix:{config.tls.admin_socket}"
            log = tmp_path / name / "daemon.log"
            with log.open("wb") as out:
                procs[name] = subprocess.Popen(
                    [*sealed.enter, EDGE_AGENT, "serve", "--config", str(path)],
                    stdout=out,
                    stderr=out,
                    env=_box_environment(home),
                )
        started = time.monotonic()
        for name in boxes:
            _wait_serving(admins[name], procs[name], tmp_path / name / "daemon.log")
            assert "local: edge-demo-mistral" in _chat_over_tcp(sealed, boxes[name][0])
        for name in boxes:
            admin = OperatorTarget(address=admins[name], insecure=True)
            archive = signed_model_archive(fleet, DEMO_MODEL, tmp_path / name / "bundles", 2)
            assert push_archive(admin, archive, progress=False).outcome == "activated"
        chats = 0
        while time.monotonic() - started < RUN_S:
            for port, _ in boxes.values():
                said = _chat_over_tcp(sealed, port)
                assert "local: edge-demo-mistral 1.2.0 on cpu" in said, said  # the new bundle
                chats += 1
            time.sleep(4)
        for name in boxes:
            with Client(admins[name]) as client:
                chunks = list(client.chat([("user", "Hi")], ChatOptions(max_tokens=4)))
            assert chunks[-1].provenance is not None
            assert chunks[-1].provenance.model_version == "1.2.0"
            procs[name].send_signal(signal.SIGTERM)
        for name in boxes:
            assert procs[name].wait(timeout=60) == 0, (tmp_path / name / "daemon.log").read_text()
        ran_s = time.monotonic() - started
        records = capture.stop()
    assert ran_s >= 60
    assert chats >= 4
    assert records == {"dns": [], "tcp_syn": [], "other": []}, records
    assert not (home / ".cache" / "Microsoft").exists()
    assert not list(tmp_path.glob("*/state/**/.onnxruntime"))
    prove_sink_sees(sealed)


CONTROL = """
import sys, time
if sys.argv[1] == "sealed":
    from edge_agent.engine._netseal import seal_network
    seal_network()
import onnxruntime_genai as og
model = og.Model(sys.argv[2])
og.Tokenizer(model)
time.sleep(float(sys.argv[3]))
"""


def test_onnxruntime_telemetry_is_real_and_the_seal_stops_it(tmp_path: Path) -> None:
    """Telemetry switched ON on purpose: unsealed it reaches the sink; the seccomp seal alone
    (without the environment switch) keeps it in."""
    require(missing_tools(), "the egress proof")
    # As on a box, not a CI runner: the telemetry stays quiet when the environment says CI
    # (CI=true) or moves the cache (XDG_CACHE_HOME) (both seen here), and our own switches are
    # what is under test. A fresh HOME each: onnxruntime keeps its event queue and upload state
    # under $HOME/.cache/Microsoft, and a queue from earlier runs may hold back its uploads.
    env = _box_environment(tmp_path)
    homes = {mode: tmp_path / f"home-{mode}" for mode in ("open", "sealed")}
    for home in homes.values():
        home.mkdir()
    with (
        fresh_namespace() as open_net,
        fresh_namespace() as sealed_net,
        open_net.capture() as open_cap,
        sealed_net.capture() as sealed_cap,
    ):
        runs = [
            subprocess.Popen(
                [*net.enter, sys.executable, "-c", CONTROL, mode, str(DEMO_MODEL), "30"],
                env=env | {"HOME": str(homes[mode])},
            )
            for mode, net in (("open", open_net), ("sealed", sealed_net))
        ]
        assert [p.wait(timeout=120) for p in runs] == [0, 0]
        seen = {"open": open_cap.stop(), "sealed": sealed_cap.stop()}
    names = {r["name"] for r in seen["open"]["dns"]}
    assert "mobile.events.data.microsoft.com" in names, seen["open"]
    assert seen["sealed"] == {"dns": [], "tcp_syn": [], "other": []}, seen["sealed"]
    # It also queued its events (a device id, ...) under its HOME: what the environment
    # switch prevents (asserted for the daemons above).
    assert (homes["open"] / ".cache" / "Microsoft").is_dir()
