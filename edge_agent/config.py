"""The agent's configuration: one TOML file, validated once into frozen, typed objects.

Domain sections (bundles, pressure, cloud, policy, tls, ...) are parsed by their own packages;
this module composes them. Nothing here reads environment variables: the caller passes the
file path, and every path in the file may be relative to the file's folder.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent._tomlreader import TableReader
from edge_agent.audit import AuditConfig, parse_audit_config
from edge_agent.bundles import BundlesConfig, parse_bundles_config
from edge_agent.cloud import CloudConfig, parse_cloud_config
from edge_agent.credentials import CredentialsConfig, parse_credentials_config
from edge_agent.discovery import DiscoveryConfig, parse_discovery_config
from edge_agent.errors import ConfigError
from edge_agent.metrics import MetricsConfig, parse_metrics_config
from edge_agent.policy import PolicyConfig, parse_policy_config
from edge_agent.pressure import PressureConfig, parse_pressure_config
from edge_agent.tls import AuthConfig, TlsConfig, parse_auth_config, parse_tls_config

__all__ = [
    "KNOWN_PROVIDERS",
    "AgentConfig",
    "EngineConfig",
    "HttpConfig",
    "LoggingConfig",
    "PathsConfig",
    "ServerConfig",
    "default_config",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")

# Provider names as onnxruntime-genai's Config.append_provider spells them.
KNOWN_PROVIDERS = ("qnn", "openvino", "dml", "cuda", "webgpu", "cpu")


@dataclass(frozen=True, slots=True)
class PathsConfig:
    state_dir: Path = Path("/var/lib/edge-agent")
    runtime_dir: Path = Path("/run/edge-agent")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    # "host:port" (IPv6 as "[::1]:port"); port 0 picks a free port (tests).
    listen: tuple[str, ...] = ("127.0.0.1:50051",)
    grace_s: float = 10.0
    reflection: bool = False
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_streams: int = 256
    # glibc malloc arenas of the daemon (edge_agent/_malloc.py); 0 leaves glibc's default.
    malloc_arena_max: int = 2


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The OpenAI-compatible HTTP API (edge_agent/openai_api). Off unless ``listen`` is set.

    Addresses follow the gRPC rules: plaintext on loopback (or with
    ``tls.allow_plaintext``), TLS with the device certificate everywhere else.
    """

    listen: tuple[str, ...] = ()
    # The open demo: a bearer token the box does not know counts as no token, so loopback
    # callers (allowed anonymously by auth.allow_anonymous_loopback) may send any API key.
    accept_any_token: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    # An SSE comment (``: ping``) after this many seconds without a byte on a stream (a long
    # prefill, a queue), so proxies and clients with read timeouts keep it; 0 turns it off.
    sse_ping_interval_s: float = 15.0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    # The model folder served when no bundle is active (the embedded demo model by default).
    model_dir: Path | None = None
    providers: tuple[str, ...] = KNOWN_PROVIDERS
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    intra_op_threads: int = 0  # 0: one per physical core this process may use (engine/_cpus)
    # onnxruntime's threads busy-wait between operators (its own default): on the bench
    # model 1.39x the single-stream decode speed; off, an idle worker burns no CPU at all.
    thread_spinning: bool = True
    # The worker runs at a lower priority so health checks, the watchdog and mDNS in the
    # daemon get a core at once even while every core is decoding.
    worker_nice: int = 5
    lanes: int = 3  # Engines sharing one model, stepped in turn (see docs/ARCHITECTURE.md)
    max_batch_size: int = 16
    # A request that has generated at most this many tokens may move into a fresh lane's
    # batch (engine/_worker.py "Regrouping"); 0 turns regrouping off.
    regroup_max_tokens: int = 16
    # A prompt longer than this is read this many tokens per step, between the other
    # streams' steps, so they keep their pace while it prefills; 0 reads every prompt whole.
    prefill_chunk_tokens: int = 128
    # While other streams decode, a chunk is cut so that reading it takes at most this many
    # decode steps (measured by the worker; never under 2 tokens); 0 keeps the fixed chunk.
    # 1.5 met the stall goal on the real shape (docs/BENCHMARKS.md "Real shape").
    prefill_stall_target: float = 1.5
    # Finished Generator lanes kept idle with their KV cache, so the next turn of a
    # conversation reads only its new tokens (engine/_prefix.py); 0 turns reuse off.
    prefix_cache_lanes: int = 2
    # onnxruntime's CPU memory arena: off, a burst's activations go back to the system.
    cpu_memory_arena: bool = False
    # glibc's malloc in the worker asks for transparent huge pages (edge_agent/_malloc.py):
    # without the arena, a step's fresh activations otherwise fault in 4 KiB at a time.
    huge_page_malloc: bool = True
    load_timeout_s: float = 900.0
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    ping_interval_s: float = 2.0
    # A worker that answers no ping and uses no CPU for this long is killed and restarted
    # (a long step keeps it busy, not silent: see engine/_liveness.py).
    liveness_timeout_s: float = 10.0
    max_messages: int = 256
    max_message_chars: int = 64 * 1024
    max_stop_strings: int = 4


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole configuration; build it with :func:`parse_config` or :func:`load_config`."""

    source: str
    paths: PathsConfig
    server: ServerConfig
    engine: EngineConfig
    logging: LoggingConfig
    pressure: PressureConfig
    metrics: MetricsConfig
    bundles: BundlesConfig
    cloud: CloudConfig
    policy: PolicyConfig
    credentials: CredentialsConfig
    audit: AuditConfig
    tls: TlsConfig
    auth: AuthConfig
    discovery: DiscoveryConfig
    http: HttpConfig = HttpConfig()


def _parse_paths(r: TableReader, base: Path) -> PathsConfig:
    d = PathsConfig()
    cfg = PathsConfig(
        state_dir=r.path("state_dir", d.state_dir, base=base),
        runtime_dir=r.path("runtime_dir", d.runtime_dir, base=base),
    )
    r.finish()
    return cfg


def _parse_listen(r: TableReader, default: tuple[str, ...]) -> tuple[str, ...]:
    listen = r.string_list("listen", default)
    if not listen:
        raise r.error("listen", "needs at least one address")
    for addr in listen:
        if addr.startswith("unix:"):
            continue
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise r.error("listen", f"{addr!r} is not host:port")
    return listen


def _parse_server(r: TableReader) -> ServerConfig:
    d = ServerConfig()
    cfg = ServerConfig(
        listen=_parse_listen(r, d.listen),
        grace_s=r.number("grace_s", d.grace_s, min_value=0, max_value=3600),
        reflection=r.boolean("reflection", d.reflection),
        max_message_bytes=r.integer(
            "max_message_bytes", d.max_message_bytes, min_value=1024, max_value=256 * 1024 * 1024
        ),
        max_concurrent_streams=r.integer(
            "max_concurrent_streams", d.max_concurrent_streams, min_value=1
        ),
        malloc_arena_max=r.integer(
            "malloc_arena_max", d.malloc_arena_max, min_value=0, max_value=1024
        ),
    )
    r.finish()
    return cfg


def _parse_http(r: TableReader) -> HttpConfig:
    d = HttpConfig()
    listen = r.string_list("listen", d.listen)
    for addr in listen:
        host, sep, port = addr.rpartition(":")
        if addr.startswith("unix:") or not sep or not host or not port.isdigit():
            raise r.error("listen", f"{addr!r} is not host:port")
        if int(port) > 65535:
            raise r.error("listen", f"{addr!r}: port out of range")
    cfg = HttpConfig(
        listen=listen,
        accept_any_token=r.boolean("accept_any_token", d.accept_any_token),
        max_body_bytes=r.integer(
            "max_body_bytes", d.max_body_bytes, min_value=1024, max_value=256 * 1024 * 1024
        ),
        sse_ping_interval_s=r.number(
            "sse_ping_interval_s", d.sse_ping_interval_s, min_value=0.0, max_value=3600.0
        ),
    )
    r.finish()
    return cfg


def _parse_provider_options(r: TableReader) -> dict[str, dict[str, str]]:
    raw = r.raw("provider_options", {})
    if not isinstance(raw, dict):
        raise r.error("provider_options", "expected a table of tables")
    out: dict[str, dict[str, str]] = {}
    for name, opts in raw.items():
        if name not in KNOWN_PROVIDERS:
            raise r.error(f"provider_options.{name}", f"unknown provider {name!r}")
        if not isinstance(opts, dict) or not all(isinstance(v, str) for v in opts.values()):
            raise r.error(f"provider_options.{name}", "expected a table of strings")
        out[name] = dict(opts)
    return out


def _parse_engine(r: TableReader, base: Path) -> EngineConfig:
    d = EngineConfig()
    providers = r.string_list("providers", d.providers)
    for p in providers:
        if p not in KNOWN_PROVIDERS:
            raise r.error(
                "providers", f"unknown provider {p!r}; known: {', '.join(KNOWN_PROVIDERS)}"
            )
    if not providers:
        raise r.error("providers", "needs at least one provider")
    backoff = r.number("restart_backoff_s", d.restart_backoff_s, min_value=0.01, max_value=600)
    ping_interval = r.number("ping_interval_s", d.ping_interval_s, min_value=0.05, max_value=60)
    cfg = EngineConfig(
        model_dir=r.optional_path("model_dir", base=base),
        providers=providers,
        provider_options=_parse_provider_options(r),
        intra_op_threads=r.integer(
            "intra_op_threads", d.intra_op_threads, min_value=0, max_value=1024
        ),
        thread_spinning=r.boolean("thread_spinning", d.thread_spinning),
        worker_nice=r.integer("worker_nice", d.worker_nice, min_value=0, max_value=19),
        lanes=r.integer("lanes", d.lanes, min_value=1, max_value=16),
        max_batch_size=r.integer("max_batch_size", d.max_batch_size, min_value=1, max_value=256),
        regroup_max_tokens=r.integer(
            "regroup_max_tokens", d.regroup_max_tokens, min_value=0, max_value=4096
        ),
        prefill_chunk_tokens=r.integer(
            "prefill_chunk_tokens", d.prefill_chunk_tokens, min_value=0, max_value=1 << 20
        ),
        prefill_stall_target=r.number(
            "prefill_stall_target", d.prefill_stall_target, min_value=0, max_value=1000
        ),
        prefix_cache_lanes=r.integer(
            "prefix_cache_lanes", d.prefix_cache_lanes, min_value=0, max_value=64
        ),
        cpu_memory_arena=r.boolean("cpu_memory_arena", d.cpu_memory_arena),
        huge_page_malloc=r.boolean("huge_page_malloc", d.huge_page_malloc),
        load_timeout_s=r.number("load_timeout_s", d.load_timeout_s, min_value=1),
        restart_backoff_s=backoff,
        restart_backoff_max_s=r.number(
            "restart_backoff_max_s", d.restart_backoff_max_s, min_value=backoff, max_value=3600
        ),
        ping_interval_s=ping_interval,
        liveness_timeout_s=r.number(
            "liveness_timeout_s",
            max(d.liveness_timeout_s, 3 * ping_interval),
            min_value=2 * ping_interval,
            max_value=3600,
        ),
        max_messages=r.integer("max_messages", d.max_messages, min_value=1, max_value=10_000),
        max_message_chars=r.integer(
            "max_message_chars", d.max_message_chars, min_value=1, max_value=16 * 1024 * 1024
        ),
        max_stop_strings=r.integer(
            "max_stop_strings", d.max_stop_strings, min_value=0, max_value=64
        ),
    )
    r.finish()
    return cfg


def _parse_logging(r: TableReader) -> LoggingConfig:
    d = LoggingConfig()
    cfg = LoggingConfig(
        level=r.string("level", d.level, choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        json=r.boolean("json", d.json),
    )
    r.finish()
    return cfg


def parse_config(document: dict[str, Any], *, source: str, base: Path) -> AgentConfig:
    """Validate a parsed TOML document; ``base`` resolves relative paths."""
    root = TableReader(document, source=source)
    paths = _parse_paths(root.table("paths"), base)
    state = paths.state_dir
    cfg = AgentConfig(
        source=source,
        paths=paths,
        server=_parse_server(root.table("server")),
        engine=_parse_engine(root.table("engine"), base),
        logging=_parse_logging(root.table("logging")),
        pressure=_finished(parse_pressure_config, root.table("pressure")),
        metrics=_finished(parse_metrics_config, root.table("metrics")),
        bundles=_finished(parse_bundles_config, root.table("bundles"), base=base),
        cloud=_finished(parse_cloud_config, root.table("cloud")),
        policy=_finished(parse_policy_config, root.table("policy"), state_dir=state, base=base),
        credentials=_finished(
            parse_credentials_config, root.table("credentials"), state_dir=state, base=base
        ),
        audit=_finished(parse_audit_config, root.table("audit"), state_dir=state, base=base),
        tls=_parse_tls(root.table("tls"), paths),
        auth=_finished(parse_auth_config, root.table("auth")),
        discovery=_finished(parse_discovery_config, root.table("discovery")),
        http=_parse_http(root.table("http")),
    )
    root.finish()
    return cfg


def _parse_tls(reader: TableReader, paths: PathsConfig) -> TlsConfig:
    tls: TlsConfig = _finished(parse_tls_config, reader, state_dir=paths.state_dir)
    if not reader.has("admin_socket"):
        # The admin socket lives with the other runtime files unless placed explicitly.
        tls = dataclasses.replace(tls, admin_socket=paths.runtime_dir / "admin.sock")
    return tls


def _finished(parse: Any, reader: TableReader, **kwargs: Any) -> Any:
    """Run a section parser and refuse keys it did not read (idempotent if it already did)."""
    value = parse(reader, **kwargs)
    reader.finish()
    return value


def default_config(state_dir: Path, *, listen: tuple[str, ...] | None = None) -> AgentConfig:
    """Defaults everywhere, state under ``state_dir``, loopback open (the demo and tests)."""
    document: dict[str, Any] = {
        "paths": {"state_dir": str(state_dir), "runtime_dir": str(state_dir / "run")},
        # Open to every local user: fine for a demo on one's own machine, never for a box.
        "auth": {"allow_anonymous_loopback": True},
    }
    if listen is not None:
        document["server"] = {"listen": list(listen)}
    return parse_config(document, source="<defaults>", base=state_dir)


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``path``; every problem is a ConfigError naming the file and key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(document, source=str(path), base=path.resolve().parent)
