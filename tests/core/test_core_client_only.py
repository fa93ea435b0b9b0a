"""`edge_agent.client` works on a machine with only grpcio and protobuf: it must not pull in
the daemon (engine, crypto, discovery, web stack) to talk to one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# What the daemon needs and a client must not: refused at import in the child process.
DAEMON_ONLY = (
    "cryptography",
    "zeroconf",
    "ifaddr",
    "numpy",
    "onnxruntime",
    "onnxruntime_genai",
    "tokenizers",
    "model_signing",
    "psutil",
    "httpx",
    "starlette",
    "uvicorn",
    "pydantic",
    "prometheus_client",
)

CHILD = textwrap.dedent(
    """
    import sys

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"client-only: {name} is not installed")
            return None

    sys.meta_path.insert(0, Refuse())
    from edge_agent.client import ChatOptions, Client, DataClass
    from edge_agent.client._convert import build_request

    request = build_request(
        [("user", "hi")], ChatOptions(max_tokens=3, data_class=DataClass.PUBLIC)
    )
    assert request.max_tokens == 3 and request.messages[0].content == "hi"
    with Client("127.0.0.1:9") as client:  # no daemon needed to build one
        pass
    print("ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """
)


def test_client_imports_and_builds_requests_without_the_daemons_dependencies() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", f"BLOCKED = {set(DAEMON_ONLY)!r}\n{CHILD}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok []"
