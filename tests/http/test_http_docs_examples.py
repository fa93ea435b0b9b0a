"""The examples of docs/API.md ("Examples"), run as written with the URL pointed at a test
daemon: curl -N, the openai SDK, LangChain."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import RunningAgent
from http_harness import base_url, sse_events

API_MD = Path(__file__).resolve().parents[2] / "docs" / "API.md"
DEMO_URL = "http://127.0.0.1:8080"


def _examples() -> list[tuple[str, str]]:
    text = API_MD.read_text(encoding="utf-8")
    section = text.split("### Examples", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.DOTALL)


def _run(argv: list[str], daemon: RunningAgent) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LANG"))}
    done = subprocess.run(
        [*argv[:-1], argv[-1].replace(DEMO_URL, base_url(daemon))],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_examples_are_all_there() -> None:
    kinds = [kind for kind, _ in _examples()]
    assert kinds == ["bash", "python", "python"]
    assert all(DEMO_URL in code for _, code in _examples())


def test_curl_example(daemon: RunningAgent) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (code,) = [c for kind, c in _examples() if kind == "bash"]
    assert code.startswith("curl -N ")
    events = sse_events(_run(["bash", "-c", code], daemon).encode())
    assert events[-1] == "[DONE]"
    objects = [json.loads(e) for e in events[:-1]]
    assert objects[0]["choices"][0]["delta"]["role"] == "assistant"
    assert objects[-2]["edge_provenance"]["destination"] == "local"
    assert objects[-1]["choices"] == [] and objects[-1]["usage"]["completion_tokens"] > 0


def test_openai_sdk_example(daemon: RunningAgent) -> None:
    code = _examples()[1][1]
    assert "from openai import OpenAI" in code
    assert _run([sys.executable, "-c", code], daemon).strip()


def test_langchain_example(daemon: RunningAgent) -> None:
    code = _examples()[2][1]
    assert "from langchain_openai import ChatOpenAI" in code
    answer, calls = _run([sys.executable, "-c", code], daemon).rstrip("\n").rsplit("\n", 1)
    assert answer.strip()
    assert calls.startswith("[{'name': 'get_weather', 'args': {'city': ")
