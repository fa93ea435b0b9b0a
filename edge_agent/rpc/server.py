"""Assembly of the grpc.aio server: services, interceptors, health, reflection, listeners."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from edge_agent._proto.edge_agent.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
)
from edge_agent.config import ServerConfig
from edge_agent.rpc.inference_api import InferenceApi
from edge_agent.rpc.interceptors import ErrorInterceptor
from edge_agent.tls import BoundListener, DeviceCertificate, Listener, TlsConfig, add_listeners

__all__ = ["INFERENCE_SERVICE", "OPERATOR_SERVICE", "BuiltServer", "build_server"]

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
OPERATOR_SERVICE = operator_pb2.DESCRIPTOR.services_by_name["Operator"].full_name


@dataclass
class BuiltServer:
    server: aio.Server
    health: health_aio.HealthServicer
    bound: list[BoundListener]

    def port_of(self, address: str) -> int:
        for b in self.bound:
            if b.listener.address == address:
                return b.port
        raise KeyError(address)


def build_server(
    config: ServerConfig,
    inference: InferenceApi,
    *,
    plan: Sequence[Listener],
    tls: TlsConfig,
    device: DeviceCertificate | None,
    operator: operator_pb2_grpc.OperatorServicer | None = None,
    extra_interceptors: Sequence[aio.ServerInterceptor] = (),
) -> BuiltServer:
    """Create the server and bind every planned listener (it still has to be started)."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.so_reuseport", 0),
    ]
    # Auth runs first, so nothing reaches a servicer (or the error mapper) unauthenticated.
    server = aio.server(
        interceptors=[*extra_interceptors, ErrorInterceptor()],
        options=options,
        maximum_concurrent_rpcs=config.max_concurrent_streams * 2,
    )
    inference_pb2_grpc.add_InferenceServicer_to_server(inference, server)
    names = [INFERENCE_SERVICE]
    if operator is not None:
        operator_pb2_grpc.add_OperatorServicer_to_server(operator, server)
        names.append(OPERATOR_SERVICE)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if config.reflection:
        names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
    bound = add_listeners(server, plan, tls, device)
    return BuiltServer(server=server, health=health, bound=bound)
