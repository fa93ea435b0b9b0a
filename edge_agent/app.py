"""The composition root: builds the managers, the gRPC server, and runs the lifecycle.

Start: engine (model loaded) → server bound and started → health SERVING.
Stop (SIGTERM/SIGINT), each stage bounded: health NOT_SERVING → stop accepting and drain
streams within the grace → engine worker stopped → exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from grpc_health.v1 import health_pb2

import edge_agent
from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent.chat import ChatChunk, ChatSpec
from edge_agent.config import AgentConfig
from edge_agent.engine import EngineSupervisor, identity_from_dir
from edge_agent.errors import ConfigError
from edge_agent.inference import InferenceService
from edge_agent.rpc.inference_api import InferenceApi
from edge_agent.rpc.server import INFERENCE_SERVICE, BuiltServer, build_server

__all__ = ["Agent", "default_model_dir"]

_log = logging.getLogger(__name__)

_SERVING_STATE = {
    "starting": pb.SERVING_STATE_STARTING,
    "ready": pb.SERVING_STATE_SERVING,
    "restarting": pb.SERVING_STATE_DEGRADED,
    "stopped": pb.SERVING_STATE_STOPPING,
}


def default_model_dir() -> Path:
    """The embedded demo model: in the source tree, or where the Debian package puts it."""
    candidates = [
        Path(edge_agent.__file__).resolve().parent.parent / "models" / "demo",
        Path("/opt/edge-agent/share/models/demo"),
    ]
    for candidate in candidates:
        if (candidate / "genai_config.json").is_file():
            return candidate
    raise ConfigError("engine.model_dir: not set and no embedded demo model was found")


class Agent:
    """One running daemon."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        model_dir = config.engine.model_dir or default_model_dir()
        self.engine = EngineSupervisor(
            config.engine, identity_from_dir(model_dir), on_state=self._on_engine_state
        )
        self.inference = InferenceService(self.engine)
        self._api = InferenceApi(self._chat, self._status, self._models, config.engine)
        self._built: BuiltServer | None = None
        self._started_at = time.monotonic()
        self._stopping = False
        self._stop_requested = asyncio.Event()

    @property
    def ports(self) -> list[int]:
        return self._built.ports if self._built else []

    # -- domain callbacks the API layer uses ----------------------------------------------

    def _chat(self, spec: ChatSpec) -> AsyncIterator[ChatChunk]:
        return self.inference.chat(spec)

    def _models(self) -> list[pb.ModelInfo]:
        model, info = self.engine.model, self.engine.info
        return [
            pb.ModelInfo(
                name=model.name,
                version=model.version,
                destination=pb.DESTINATION_LOCAL,
                architecture=model.architecture,
                quantization=model.quantization,
                execution_provider=info.execution_provider if info else "",
                context_length=info.context_length if info else 0,
                active=True,
            )
        ]

    def _status(self) -> pb.GetStatusResponse:
        engine = self.engine.status()
        state = pb.SERVING_STATE_STOPPING if self._stopping else _SERVING_STATE[engine.state]
        return pb.GetStatusResponse(
            agent_version=edge_agent.__version__,
            state=state,
            active_model=self._models()[0],
            engine=pb.EngineStatus(
                state=engine.state,
                execution_provider=engine.execution_provider,
                restarts=engine.restarts,
                active_requests=engine.active_requests,
                queued_requests=engine.queued_requests,
                lanes=engine.lanes,
                max_batch_size=engine.max_batch_size,
            ),
            uptime_s=time.monotonic() - self._started_at,
        )

    def _on_engine_state(self, state: str) -> None:
        if self._built is None or self._stopping:
            return
        serving = state == "ready"
        asyncio.get_running_loop().create_task(self._set_health(serving))

    async def _set_health(self, serving: bool) -> None:
        if self._built is None or self._stopping:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", INFERENCE_SERVICE):
            await self._built.health.set(name, status)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._built = build_server(self.config.server, self._api)
        await self._set_health(False)
        await self.engine.start()
        await self._built.server.start()
        await self._set_health(self.engine.state == "ready")
        _log.info(
            "serving %s %s on %s (ports %s)",
            self.engine.model.name,
            self.engine.model.version,
            self.engine.info.execution_provider if self.engine.info else "?",
            self.ports,
        )

    async def stop(self) -> None:
        """Staged stop; each stage is bounded so the whole fits systemd's stop timeout."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.server.grace_s
        if self._built is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._built.health.enter_graceful_shutdown()
            # Refuses new RPCs at once and waits up to `grace` for in-flight streams.
            await self._built.server.stop(grace)
        await self.engine.stop()
        _log.info("stopped")

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def serve(self) -> None:
        """Start, serve until :meth:`request_stop`, then stop gracefully."""
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        await self.serve_started()

    async def serve_started(self) -> None:
        """Serve an agent already started until :meth:`request_stop`, then stop."""
        try:
            await self._stop_requested.wait()
        finally:
            self._stop_requested.clear()
            await self.stop()

    async def run(self) -> None:
        """:meth:`serve` until SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
