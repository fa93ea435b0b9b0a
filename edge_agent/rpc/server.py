"""Assembly of the grpc.aio server: services, interceptors, health, reflection, ports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from edge_agent._proto.edge_agent.v1 import inference_pb2, inference_pb2_grpc
from edge_agent.config import ServerConfig
from edge_agent.errors import ConfigError
from edge_agent.rpc.inference_api import InferenceApi
from edge_agent.rpc.interceptors import ErrorInterceptor

__all__ = ["INFERENCE_SERVICE", "BuiltServer", "build_server"]

INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


@dataclass
class BuiltServer:
    server: aio.Server
    health: health_aio.HealthServicer
    ports: list[int]  # bound port per listen address, in order


def build_server(
    config: ServerConfig,
    inference: InferenceApi,
    *,
    extra_interceptors: Sequence[aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> BuiltServer:
    """Create the server and bind its ports (it still has to be started)."""
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
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if config.reflection:
        names = (INFERENCE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
    ports = []
    for address in config.listen:
        try:
            if credentials is not None and not address.startswith("unix:"):
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"server.listen: cannot bind {address}") from exc
        ports.append(port)
    return BuiltServer(server=server, health=health, ports=ports)
