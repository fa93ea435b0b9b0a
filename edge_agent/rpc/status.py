"""GetStatus / ListModels messages from the domain's views."""

from __future__ import annotations

import time
from dataclasses import dataclass

from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent.cloud import ConnectivitySnapshot
from edge_agent.engine import EngineStatusView, ModelIdentity
from edge_agent.pressure import PressureSnapshot

__all__ = ["StatusView", "local_model_info", "status_to_proto"]

_SERVING_STATE = {
    "starting": pb.SERVING_STATE_STARTING,
    "ready": pb.SERVING_STATE_SERVING,
    "restarting": pb.SERVING_STATE_DEGRADED,
    "stopped": pb.SERVING_STATE_STOPPING,
}


@dataclass(frozen=True, slots=True)
class StatusView:
    agent_version: str
    stopping: bool
    model: ModelIdentity
    engine: EngineStatusView
    uptime_s: float
    pressure: PressureSnapshot | None = None
    connectivity: ConnectivitySnapshot | None = None
    tls_fingerprint: str = ""
    device_id: str = ""
    # Why the box serves no signed bundle (it fell back to the built-in model), or "".
    bundle_problem: str = ""


def local_model_info(model: ModelIdentity, engine: EngineStatusView) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=model.name,
        version=model.version,
        destination=pb.DESTINATION_LOCAL,
        architecture=model.architecture,
        quantization=model.quantization,
        execution_provider=engine.execution_provider,
        context_length=engine.context_length,
        active=True,
    )


def _pressure(snapshot: PressureSnapshot) -> pb.PressureStatus:
    psi = snapshot.psi
    out = pb.PressureStatus(level=snapshot.level.label, reasons=list(snapshot.reasons))
    if psi.cpu is not None:
        out.cpu_some_avg10 = psi.cpu.some.avg10
    if psi.memory is not None:
        out.memory_some_avg10 = psi.memory.some.avg10
        if psi.memory.full is not None:
            out.memory_full_avg10 = psi.memory.full.avg10
    if psi.io is not None:
        out.io_some_avg10 = psi.io.some.avg10
    if snapshot.memory is not None:
        out.memory_available_bytes = snapshot.memory.available_bytes
        out.memory_total_bytes = snapshot.memory.total_bytes
    if snapshot.cpu_percent is not None:
        out.cpu_percent = snapshot.cpu_percent
    if snapshot.max_temperature_c is not None:
        out.max_temperature_c = snapshot.max_temperature_c
    if snapshot.accelerators:
        out.accelerator_memory_free_bytes = sum(a.free_bytes for a in snapshot.accelerators)
        out.accelerator_memory_total_bytes = sum(a.total_bytes for a in snapshot.accelerators)
    return out


def status_to_proto(view: StatusView) -> pb.GetStatusResponse:
    engine = view.engine
    state = pb.SERVING_STATE_STOPPING if view.stopping else _SERVING_STATE[engine.state]
    if view.bundle_problem and state == pb.SERVING_STATE_SERVING:
        state = pb.SERVING_STATE_DEGRADED
    response = pb.GetStatusResponse(
        agent_version=view.agent_version,
        state=state,
        active_model=local_model_info(view.model, engine),
        engine=pb.EngineStatus(
            state=engine.state,
            execution_provider=engine.execution_provider,
            restarts=engine.restarts,
            active_requests=engine.active_requests,
            queued_requests=engine.queued_requests,
            lanes=engine.lanes,
            max_batch_size=engine.max_batch_size,
            intra_op_threads=engine.intra_op_threads,
            wedged_restarts=engine.wedged_restarts,
            last_sign_of_life_age_s=engine.last_sign_of_life_age_s,
        ),
        uptime_s=view.uptime_s,
        tls_fingerprint_sha256=view.tls_fingerprint,
        device_id=view.device_id,
    )
    if view.pressure is not None:
        response.pressure.CopyFrom(_pressure(view.pressure))
    if view.connectivity is not None:
        c = view.connectivity
        age = c.probe_age_s(time.time())
        response.connectivity.CopyFrom(
            pb.ConnectivityStatus(
                state=str(c.state.value),
                circuit=str(c.breaker.value),
                last_probe_age_s=-1.0 if age is None else age,
                reason=c.reason,
                retry_in_s=c.retry_in_s or 0.0,
                last_failure_kind=c.last_failure_kind or "",
                unavailable_models=list(c.unavailable_models),
            )
        )
    return response
