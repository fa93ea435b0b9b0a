"""The one exception tree of edge-agent.

Every error the daemon raises on purpose derives from :class:`EdgeAgentError` and carries
the gRPC status code a client sees. One interceptor (``edge_agent.rpc.interceptors``) maps
them; anything else becomes ``INTERNAL`` with a request id and no internal detail.

    EdgeAgentError
    ├── ConfigError                    (FAILED_PRECONDITION; raised before serving)
    ├── InvalidArgument                (INVALID_ARGUMENT; names the offending field)
    ├── NotFound                       (NOT_FOUND)
    ├── PermissionDenied               (PERMISSION_DENIED)
    ├── Unauthenticated                (UNAUTHENTICATED)
    ├── FailedPrecondition             (FAILED_PRECONDITION)
    ├── ResourceExhausted              (RESOURCE_EXHAUSTED; may carry retry pushback)
    ├── Unavailable                    (UNAVAILABLE)
    │   └── EngineUnavailable          (the engine worker is down or restarting)
    ├── DeadlineExceeded               (DEADLINE_EXCEEDED)
    ├── Cancelled                      (CANCELLED)
    ├── BundleError                    (FAILED_PRECONDITION; a bundle was refused)
    │   └── SignatureError             (the signature did not verify)
    ├── PolicyError                    (FAILED_PRECONDITION; a policy was refused)
    ├── CredentialError                (FAILED_PRECONDITION; an envelope was refused)
    └── CloudError                     (UNAVAILABLE; the cloud route failed)

Messages are written for the client: they never contain secrets, paths of the box's
state, or stack traces.
"""

from __future__ import annotations

import grpc

__all__ = [
    "BundleError",
    "Cancelled",
    "CloudError",
    "ConfigError",
    "CredentialError",
    "DeadlineExceeded",
    "EdgeAgentError",
    "EngineUnavailable",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PolicyError",
    "ResourceExhausted",
    "SignatureError",
    "Unauthenticated",
    "Unavailable",
]


class EdgeAgentError(Exception):
    """Base of every error edge-agent raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(EdgeAgentError):
    """The configuration file is invalid; the message names the file and key."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidArgument(EdgeAgentError):
    """A request field is invalid."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(EdgeAgentError):
    """The named thing does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(EdgeAgentError):
    """The caller's role does not allow this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(EdgeAgentError):
    """The caller did not prove who it is."""

    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(EdgeAgentError):
    """The box is not in a state that allows this."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(EdgeAgentError):
    """The box cannot take this work now; retry after ``retry_after_ms``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(EdgeAgentError):
    """The service cannot answer now."""

    code = grpc.StatusCode.UNAVAILABLE


class EngineUnavailable(Unavailable):
    """The engine worker is down or restarting."""


class DeadlineExceeded(EdgeAgentError):
    """The request's deadline passed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(EdgeAgentError):
    """The request was cancelled."""

    code = grpc.StatusCode.CANCELLED


class BundleError(EdgeAgentError):
    """A model bundle was refused."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class SignatureError(BundleError):
    """A signature did not verify against the trust store."""


class PolicyError(EdgeAgentError):
    """A policy document was refused."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class CredentialError(EdgeAgentError):
    """A sealed credential envelope was refused."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class CloudError(EdgeAgentError):
    """The cloud route failed."""

    code = grpc.StatusCode.UNAVAILABLE
