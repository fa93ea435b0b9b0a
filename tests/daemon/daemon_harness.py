"""Runs a real daemon (gRPC server on port 0, real engine worker, embedded demo model)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.app import Agent, default_model_dir
from edge_agent.config import AgentConfig, EngineConfig, ServerConfig, default_config
from edge_agent.discovery import DiscoveryConfig
from edge_agent.metrics import MetricsConfig
from edge_agent.sdnotify import SystemdNotifier

DEMO_MODEL = default_model_dir()


@dataclass
class RunningAgent:
    agent: Agent
    loop: asyncio.AbstractEventLoop
    target: str

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the agent's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def make_config(tmp: Path, **engine: Any) -> AgentConfig:
    return dataclasses.replace(
        default_config(tmp / "state"),
        server=ServerConfig(listen=("127.0.0.1:0",), grace_s=5.0),
        engine=EngineConfig(model_dir=DEMO_MODEL, restart_backoff_s=0.2, **engine),
        metrics=MetricsConfig(port=0),
        # mDNS is proven on loopback in tests/e2e; here it would only add multicast noise.
        discovery=DiscoveryConfig(enabled=False),
    )


def start_agent(
    config: AgentConfig, *, notifier: SystemdNotifier | None = None
) -> tuple[RunningAgent, threading.Thread]:
    """Run the agent on its own loop in a thread, as the daemon's main thread would."""
    ready: Future[RunningAgent] = Future()

    def main() -> None:
        async def body() -> None:
            agent = Agent(config, notifier=notifier or SystemdNotifier({}))
            try:
                await agent.start()
            except BaseException as exc:
                ready.set_exception(exc)
                await agent.stop()
                return
            loop = asyncio.get_running_loop()
            ready.set_result(RunningAgent(agent, loop, f"127.0.0.1:{agent.ports[0]}"))
            await agent.serve_started()

        asyncio.run(body())

    thread = threading.Thread(target=main, name="agent-under-test", daemon=True)
    thread.start()
    return ready.result(timeout=120), thread


def stop_agent(running: RunningAgent, thread: threading.Thread) -> None:
    running.loop.call_soon_threadsafe(running.agent.request_stop)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the agent did not stop"
