"""``bundle.json``: the signed description of a bundle, parsed into frozen dataclasses."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.errors import BundleError

__all__ = [
    "BUNDLE_JSON",
    "FORMAT_VERSION",
    "SIGNATURES_DIR",
    "BundleManifest",
    "ModelFacts",
    "agent_version",
    "check_admissible",
    "format_time",
    "kv_bytes_per_token",
    "load_manifest",
    "memory_estimate",
    "parse_manifest",
    "version_tuple",
]

FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
# Signature files live here, excluded from hashing (recorded as ignore path in the signature).
SIGNATURES_DIR = "signatures"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")
_AGENT_VERSION_RE = re.compile(r"^(\d+(?:\.\d+){0,3})")
_MAX_JSON_BYTES = 64 * 1024
# Runtime overhead of onnxruntime beyond weights and KV cache (session, genai, arenas): the
# measured rule of docs/MODEL.md, which scripts/make_demo_model.py applies too.
_RUNTIME_OVERHEAD_BYTES = 64 * 1024**2


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the engine and the pressure monitor need to know before loading the model."""

    architecture: str
    quantization: str
    execution_providers: tuple[str, ...]
    context_length: int
    num_layers: int
    num_kv_heads: int
    head_size: int
    hidden_size: int
    vocab_size: int
    kv_bytes_per_token: int
    weights_bytes: int
    memory_estimate_bytes: int


@dataclass(frozen=True, slots=True)
class BundleManifest:
    """A parsed, validated ``bundle.json``."""

    name: str
    version: str
    release: int
    created_at: datetime
    expires_at: datetime | None
    min_agent_version: str
    model: ModelFacts

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "release": self.release,
            "created_at": format_time(self.created_at),
            "expires_at": format_time(self.expires_at) if self.expires_at else None,
            "min_agent_version": self.min_agent_version,
            "model": {
                "architecture": self.model.architecture,
                "quantization": self.model.quantization,
                "execution_providers": list(self.model.execution_providers),
                "context_length": self.model.context_length,
                "num_layers": self.model.num_layers,
                "num_kv_heads": self.model.num_kv_heads,
                "head_size": self.model.head_size,
                "hidden_size": self.model.hidden_size,
                "vocab_size": self.model.vocab_size,
                "kv_bytes_per_token": self.model.kv_bytes_per_token,
                "weights_bytes": self.model.weights_bytes,
                "memory_estimate_bytes": self.model.memory_estimate_bytes,
            },
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_size: int, dtype_bytes: int) -> int:
    """K and V, per layer, per KV head (GQA), per token."""
    return 2 * num_layers * num_kv_heads * head_size * dtype_bytes


def memory_estimate(weights_bytes: int, kv_per_token: int, context_length: int) -> int:
    """Weights + a full context of KV cache for one sequence + runtime overhead."""
    return weights_bytes + kv_per_token * context_length + _RUNTIME_OVERHEAD_BYTES


class _Fields:
    """Typed access to one JSON object; errors name the field."""

    def __init__(self, obj: Any, prefix: str) -> None:
        if not isinstance(obj, dict):
            raise BundleError(f"{BUNDLE_JSON}: {prefix or 'document'} must be an object")
        self._obj = obj
        self._prefix = prefix

    def _err(self, key: str, problem: str) -> BundleError:
        return BundleError(f"{BUNDLE_JSON}: {self._prefix}{key}: {problem}")

    def get(self, key: str) -> Any:
        if key not in self._obj:
            raise self._err(key, "missing")
        return self._obj[key]

    def string(self, key: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value:
            raise self._err(key, "must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise self._err(key, f"{value[:64]!r} is not allowed")
        return value

    def integer(self, key: str, min_value: int = 0) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._err(key, "must be an integer")
        if not min_value <= value < 2**63:
            raise self._err(key, f"must be between {min_value} and 2^63-1")
        return value

    def time(self, key: str, *, optional: bool = False) -> datetime | None:
        value = self.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.endswith("Z"):
            raise self._err(key, "must be an ISO-8601 UTC time ending in Z")
        try:
            t = datetime.fromisoformat(value[:-1] + "+00:00")
        except ValueError as exc:
            raise self._err(key, "must be an ISO-8601 UTC time ending in Z") from exc
        return t

    def unknown(self, allowed: set[str]) -> None:
        extra = sorted(set(self._obj) - allowed)
        if extra:
            raise self._err(extra[0], "unknown field")


def parse_manifest(data: bytes) -> BundleManifest:
    """Validate ``bundle.json`` bytes; every problem names the field."""
    if len(data) > _MAX_JSON_BYTES:
        raise BundleError(f"{BUNDLE_JSON}: larger than {_MAX_JSON_BYTES} bytes")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{BUNDLE_JSON}: not valid JSON") from exc
    top = _Fields(raw, "")
    top.unknown(
        {"format", "name", "version", "release", "created_at", "expires_at"}
        | {"min_agent_version", "model"}
    )
    fmt = top.integer("format")
    if fmt != FORMAT_VERSION:
        raise BundleError(f"{BUNDLE_JSON}: format {fmt} is not supported (expected 1)")
    created = top.time("created_at")
    assert created is not None
    expires = top.time("expires_at", optional=True)
    if expires is not None and expires <= created:
        raise BundleError(f"{BUNDLE_JSON}: expires_at must be after created_at")
    min_agent = top.string("min_agent_version")
    if not _AGENT_VERSION_RE.match(min_agent):
        raise BundleError(f"{BUNDLE_JSON}: min_agent_version must start with N[.N[.N]]")
    m = _Fields(top.get("model"), "model.")
    ints = [
        "context_length",
        "num_layers",
        "num_kv_heads",
        "head_size",
        "hidden_size",
        "vocab_size",
        "kv_bytes_per_token",
        "weights_bytes",
        "memory_estimate_bytes",
    ]
    m.unknown({"architecture", "quantization", "execution_providers", *ints})
    eps = m.get("execution_providers")
    if (
        not isinstance(eps, list)
        or not eps
        or not all(isinstance(e, str) and _NAME_RE.match(e.lower()) for e in eps)
    ):
        raise BundleError(f"{BUNDLE_JSON}: model.execution_providers: must list provider names")
    values = {k: m.integer(k, 1) for k in ints}
    model = ModelFacts(
        architecture=m.string("architecture"),
        quantization=m.string("quantization"),
        execution_providers=tuple(eps),
        **values,
    )
    return BundleManifest(
        name=top.string("name", _NAME_RE),
        version=top.string("version", _VERSION_RE),
        release=top.integer("release", 1),
        created_at=created,
        expires_at=expires,
        min_agent_version=min_agent,
        model=model,
    )


def load_manifest(folder: Path) -> BundleManifest:
    path = folder / BUNDLE_JSON
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_JSON_BYTES + 1)
    except FileNotFoundError as exc:
        raise BundleError(f"{BUNDLE_JSON} is missing") from exc
    except OSError as exc:
        raise BundleError(f"{BUNDLE_JSON} cannot be read") from exc
    return parse_manifest(data)


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric part of a version, padded for comparison ("0.1" == "0.1.0")."""
    match = _AGENT_VERSION_RE.match(version)
    if not match:
        raise BundleError(f"version {version[:32]!r} does not start with N[.N[.N]]")
    parts = [int(p) for p in match.group(1).split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def agent_version() -> str:
    """The running agent's version: ``edge_agent.__version__``, else the installed metadata."""
    import edge_agent

    version = getattr(edge_agent, "__version__", None)
    if isinstance(version, str) and version:
        return version
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("edge-agent")
    except PackageNotFoundError:
        return "0.0.0"


def check_admissible(
    manifest: BundleManifest, *, now: datetime, running_version: str, require_expiry: bool = True
) -> None:
    """Freeze protection and minimum agent version: refuse what must not run here."""
    if manifest.expires_at is None and require_expiry:
        # A bundle valid for ever could be replayed for ever: only lab boxes take them.
        raise BundleError(
            f"bundle {manifest.name} {manifest.version} has no expiry; this box requires one "
            "([bundles] require_expiry = false is for lab boxes)"
        )
    if manifest.expires_at is not None and manifest.expires_at <= now:
        raise BundleError(
            f"bundle {manifest.name} {manifest.version} expired at "
            f"{format_time(manifest.expires_at)} (freeze protection)"
        )
    if version_tuple(manifest.min_agent_version) > version_tuple(running_version):
        raise BundleError(
            f"bundle {manifest.name} {manifest.version} needs agent >= "
            f"{manifest.min_agent_version}, this agent is {running_version}"
        )
