"""Escalation to the Hugging Face Inference Providers router (part A of the cloud route).

``RouterClient`` streams chat completions and reads the model catalog; ``ConnectivityMonitor``
probes the router and keeps a circuit breaker fed by real outcomes; ``failover_stream``
splices a cloud stream with a local fallback. See docs/CLOUD.md.
"""

from edge_agent.cloud._client import OutcomeObserver, RouterClient, TokenProvider
from edge_agent.cloud._config import (
    DEFAULT_BASE_URL,
    CloudConfig,
    FailoverMode,
    parse_cloud_config,
)
from edge_agent.cloud._connectivity import (
    BreakerState,
    CircuitBreaker,
    Connectivity,
    ConnectivityMonitor,
    ConnectivitySnapshot,
)
from edge_agent.cloud._errors import (
    CloudAuthError,
    CloudBadRequest,
    CloudConnectError,
    CloudDisabled,
    CloudForbidden,
    CloudHTTPError,
    CloudModelNotFound,
    CloudModelUnavailable,
    CloudPaymentRequired,
    CloudProtocolError,
    CloudRateLimited,
    CloudRouterError,
    CloudServerError,
    CloudStreamCut,
    CloudStreamError,
    CloudStreamInterrupted,
    CloudTimeout,
)
from edge_agent.cloud._failover import Chunk, FailoverEvent, LocalStreamFactory, failover_stream
from edge_agent.cloud._models import (
    POLICIES,
    ModelCatalog,
    ModelInfo,
    ModelRef,
    Policy,
    Pricing,
    ProviderOffer,
    cost_usd,
    parse_model_ref,
    parse_models_response,
)
from edge_agent.cloud._types import CloudAttempt, CloudChatRequest, Source, StreamChunk

__all__ = [
    "DEFAULT_BASE_URL",
    "POLICIES",
    "BreakerState",
    "Chunk",
    "CircuitBreaker",
    "CloudAttempt",
    "CloudAuthError",
    "CloudBadRequest",
    "CloudChatRequest",
    "CloudConfig",
    "CloudConnectError",
    "CloudDisabled",
    "CloudForbidden",
    "CloudHTTPError",
    "CloudModelNotFound",
    "CloudModelUnavailable",
    "CloudPaymentRequired",
    "CloudProtocolError",
    "CloudRateLimited",
    "CloudRouterError",
    "CloudServerError",
    "CloudStreamCut",
    "CloudStreamError",
    "CloudStreamInterrupted",
    "CloudTimeout",
    "Connectivity",
    "ConnectivityMonitor",
    "ConnectivitySnapshot",
    "FailoverEvent",
    "FailoverMode",
    "LocalStreamFactory",
    "ModelCatalog",
    "ModelInfo",
    "ModelRef",
    "OutcomeObserver",
    "Policy",
    "Pricing",
    "ProviderOffer",
    "RouterClient",
    "Source",
    "StreamChunk",
    "TokenProvider",
    "cost_usd",
    "failover_stream",
    "parse_cloud_config",
    "parse_model_ref",
    "parse_models_response",
]
