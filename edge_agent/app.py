"""The composition root: builds the managers, the gRPC server, and runs the lifecycle.

Start: pressure monitor → engine (model loaded, systemd start timeout extended meanwhile) →
server bound and started → health SERVING → READY=1, watchdog.
Stop (SIGTERM/SIGINT), each stage bounded: STOPPING=1 → health NOT_SERVING → stop accepting
and drain streams within the grace → engine worker stopped → side loops stopped → exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

import edge_agent
from edge_agent._egress import set_air_gap
from edge_agent._fleetkeys import FleetKeyring
from edge_agent._malloc import limit_malloc_arenas
from edge_agent._proto.edge_agent.v1 import inference_pb2 as pb
from edge_agent.audit import AuditLog
from edge_agent.bundles import BundleManager, InboxWatcher
from edge_agent.chat import CallContext, ChatChunk, ChatSpec
from edge_agent.chat.service import (
    AuditRecorder,
    ChatService,
    CloudRoute,
    LocalChat,
    PolicySource,
)
from edge_agent.cloud import ConnectivityMonitor, ConnectivitySnapshot, RouterClient
from edge_agent.config import AgentConfig, load_config
from edge_agent.credentials import CredentialStore
from edge_agent.discovery import (
    Advertiser,
    BoxAnnouncement,
    advertised_endpoint,
    advertised_http,
    local_addresses,
)
from edge_agent.engine import EngineSupervisor, identity_from_dir
from edge_agent.errors import ConfigError, EdgeAgentError, Unavailable
from edge_agent.logsetup import handle_loop_exception
from edge_agent.metrics import Metrics, MetricsServer
from edge_agent.openai_api import HttpAuth, HttpServer, ModelEntry, build_app, needs_tls
from edge_agent.policy import BudgetLedger, PolicyDocument, PolicyStore
from edge_agent.pressure import AdmissionController, PressureMonitor, PressureSnapshot
from edge_agent.rpc.auth import AuthInterceptor, MethodRoles
from edge_agent.rpc.bundles_api import BundlesApi
from edge_agent.rpc.inference_api import InferenceApi
from edge_agent.rpc.operator_api import OperatorApi
from edge_agent.rpc.policy_api import PolicyApi
from edge_agent.rpc.server import INFERENCE_SERVICE, BuiltServer, build_server
from edge_agent.rpc.status import StatusView, local_model_info, status_to_proto
from edge_agent.sdnotify import SystemdNotifier, WatchdogLoop, extending_timeout
from edge_agent.tls import (
    Authenticator,
    DeviceCertificate,
    RateLimiter,
    current_identity,
    ensure_device_certificate,
    listen_plan,
    secure_unix_sockets,
)

__all__ = ["Agent", "default_model_dir"]

_log = logging.getLogger(__name__)

# The supervisor kills a wedged worker after engine.liveness_timeout_s; if even that does not
# bring a sign of life for this long, the daemon itself is stuck: let systemd restart us.
_ENGINE_LIVENESS_S = 120.0


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


def _client_id() -> str:
    identity = current_identity()
    return identity.client_id if identity is not None else "anonymous"


def _settle_heap() -> None:
    """Move everything alive after start-up out of the collector's reach.

    Imports, protobuf descriptors and the like never die, yet every full collection walks
    them: ~100k objects, tens of ms with the GIL held, which a health check or a token
    waiting on the loop would feel. Garbage is collected first, so only live objects freeze.
    """
    gc.collect()
    gc.freeze()
    _log.debug("%d objects frozen out of garbage collection", gc.get_freeze_count())


class _WorkerCount:
    """A counter in the worker's stats, turned into increments for Prometheus.

    The worker counts from zero, and a new worker (restart, activation) starts again.
    """

    def __init__(self, key: str) -> None:
        self._key = key
        self._seen = 0

    def since_last(self, stats: Mapping[str, Any]) -> int:
        now = int(stats.get(self._key, 0))
        if now < self._seen:
            self._seen = 0
        added, self._seen = now - self._seen, now
        return added


class Agent:
    """One running daemon."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        notifier: SystemdNotifier | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self._config_path = config_path
        self.notifier = notifier if notifier is not None else SystemdNotifier()
        model_dir = config.engine.model_dir or default_model_dir()
        self.metrics = Metrics(version=edge_agent.__version__)
        self.engine = EngineSupervisor(
            config.engine,
            identity_from_dir(model_dir),
            on_state=self._on_engine_state,
            memory_room=lambda: self.admission.memory_room_bytes(),
        )
        self.pressure = PressureMonitor(config.pressure, engine_load=self.engine.load)
        self.admission = AdmissionController(
            config.pressure.admission,
            max_active=config.engine.lanes * config.engine.max_batch_size,
            snapshot=lambda: self.pressure.snapshot,
            reclaim=self.engine.reclaim,
        )
        self.inference = LocalChat(
            self.engine,
            admission=self.admission,
            metrics=self.metrics,
            request_overhead_bytes=config.pressure.admission.request_overhead_bytes,
        )
        self._api = InferenceApi(
            self._chat, self._status, self._models, config.engine, client_id=_client_id
        )
        self._plan = listen_plan(config.tls, config.server.listen)
        # The device's own key pair (created at first start) names the box and opens tokens.
        self.credentials = CredentialStore.from_config(config.credentials)
        self.device_id = self.credentials.identity.device_id
        self.policies = PolicyStore(
            config.policy.signed_policy_path, FleetKeyring.from_paths(config.policy.trusted_keys)
        )
        self.ledger = BudgetLedger(config.policy.budget_db)
        self.audit = AuditLog(config.audit.path, include_prompts=config.audit.include_prompts)
        self.cloud = RouterClient(config.cloud, self.credentials.token_provider())
        self.connectivity = ConnectivityMonitor(self.cloud, on_change=self._on_connectivity)
        self.chat_path = ChatService(
            local=self.inference,
            policy=PolicySource(self.policies, config.policy.overrides, self.credentials.info),
            cloud=CloudRoute(
                client=self.cloud,
                connectivity=self.connectivity,
                config=config.cloud,
                ledger=self.ledger,
                metrics=self.metrics,
            ),
            audit=AuditRecorder(self.audit, include_prompts=config.audit.include_prompts),
        )
        self.bundles = BundleManager(
            config.bundles, state_dir=config.paths.state_dir, host=self.engine, audit=self.audit
        )
        self._inbox_task: asyncio.Task[None] | None = None
        self._operator = OperatorApi(
            BundlesApi(self.bundles, client_id=_client_id),
            PolicyApi(
                self.policies,
                self.credentials,
                tls_fingerprint=lambda: self.device_cert.fingerprint if self.device_cert else "",
                on_policy=self._on_policy,
                on_credentials=lambda info: self._apply_air_gap(),
            ),
        )
        self.device_cert: DeviceCertificate | None = None
        self._advertiser: Advertiser | None = None
        self._metrics_server: MetricsServer | None = None
        self._watchdog = WatchdogLoop(self.notifier)
        self._built: BuiltServer | None = None
        self._http: HttpServer | None = None
        self._created = int(time.time())
        self._started_at = time.monotonic()
        self._stopping = False
        self._start_failure: str | None = None
        self._stop_requested = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._restarts_seen = 0
        self._worker_regrouped = _WorkerCount("regrouped")
        self._worker_prefill_chunks = _WorkerCount("prefill_chunks")
        self._worker_prefix = {
            key: _WorkerCount(key)
            for key in (
                "prefix_hits", "prefix_misses", "prefix_reused_tokens", "prompt_tokens_read",
                "prefix_evictions",
            )
        }  # fmt: skip

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a side task; the loop keeps only weak references, so we hold one until done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def ports(self) -> list[int]:
        """The bound TCP port of each ``server.listen`` address, in order."""
        if self._built is None:
            return []
        return [
            self._built.port_of(a) for a in self.config.server.listen if not a.startswith("unix:")
        ]

    @property
    def http_ports(self) -> list[int]:
        """The bound TCP port of each ``http.listen`` address, in order."""
        return self._http.ports if self._http is not None else []

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.port if self._metrics_server else None

    # -- domain callbacks the API layer uses ----------------------------------------------

    def _chat(self, spec: ChatSpec, call: CallContext) -> AsyncIterator[ChatChunk]:
        if self._stopping:
            # Between SIGTERM and the server refusing calls, new work is already refused.
            raise Unavailable("the service is stopping; retry on another box or later")
        if self._refusing_unsigned():
            raise Unavailable("this box has no valid signed model bundle; retry on another box")
        return self.chat_path.chat(spec, call)

    def _refusing_unsigned(self) -> bool:
        """[bundles] without_bundle = "refuse" and no signed bundle left to serve."""
        return (
            self.bundles.fallback_reason is not None
            and self.config.bundles.without_bundle == "refuse"
        )

    def _on_policy(self, document: PolicyDocument) -> None:
        _log.info("policy version %d installed", document.version)
        self._apply_air_gap()

    def _apply_air_gap(self) -> None:
        """Follow the effective policy's air gap: no outbound socket while it is set."""
        air_gapped = self.chat_path.effective_policy().air_gapped
        set_air_gap(self, air_gapped and not self._stopping)
        self._spawn(self.cloud.set_air_gapped(air_gapped))

    def _on_connectivity(self, snapshot: ConnectivitySnapshot) -> None:
        self.metrics.set_connectivity(str(snapshot.state.value), snapshot.reason)
        if not self._stopping:
            self.notifier.status(self.status_line())

    def _models(self) -> list[pb.ModelInfo]:
        return [local_model_info(self.engine.model, self.engine.status())]

    def _model_entries(self) -> list[ModelEntry]:
        """The HTTP API's models: the local one, then the cloud models policy may use."""
        model = self.engine.model
        entries = [
            ModelEntry(
                model.name,
                "local",
                model.version,
                self.engine.status().context_length,
                self._created,
            )
        ]
        policy = self.chat_path.effective_policy()
        if policy.escalation and not policy.air_gapped:
            entries += [ModelEntry(name, "cloud", created=self._created) for name in policy.models]
        return entries

    def _http_ready(self) -> bool:
        return not self._stopping and self.engine.state == "ready"

    def status_view(self) -> StatusView:
        return StatusView(
            agent_version=edge_agent.__version__,
            stopping=self._stopping,
            model=self.engine.model,
            engine=self.engine.status(),
            uptime_s=time.monotonic() - self._started_at,
            pressure=self.pressure.snapshot,
            tls_fingerprint=self.device_cert.fingerprint if self.device_cert else "",
            device_id=self.device_id,
            connectivity=self.connectivity.snapshot(),
            bundle_problem=self.bundles.fallback_reason or "",
        )

    def _status(self) -> pb.GetStatusResponse:
        return status_to_proto(self.status_view())

    def status_line(self) -> str:
        """The systemd STATUS= line: model, provider, pressure, connectivity."""
        view = self.status_view()
        parts = [
            f"{view.model.name} {view.model.version} on {view.engine.execution_provider or '?'}",
            f"engine {view.engine.state}",
            f"{view.engine.active_requests} active",
        ]
        if view.pressure is not None:
            parts.append(f"pressure {view.pressure.level.label}")
        if view.connectivity is not None:
            parts.append(f"cloud {view.connectivity.state.value}")
        if view.bundle_problem:
            parts.append(
                "no signed bundle: "
                + ("refusing chats" if self._refusing_unsigned() else "degraded")
            )
        return "; ".join(parts)

    def _on_pressure(self, snapshot: PressureSnapshot) -> None:
        self.metrics.observe_pressure(snapshot)
        self.metrics.observe_admission(self.admission.stats)
        status = self.engine.status()
        if status.restarts > self._restarts_seen:
            for _ in range(status.restarts - self._restarts_seen):
                self.metrics.engine_restarted()
            self._restarts_seen = status.restarts
        stats = status.worker_stats
        self.metrics.engine_regrouped(self._worker_regrouped.since_last(stats))
        self.metrics.engine_prefill(
            self._worker_prefill_chunks.since_last(stats), int(stats.get("prefilling", 0))
        )
        prefix = {key: count.since_last(stats) for key, count in self._worker_prefix.items()}
        self.metrics.engine_prefix(
            hits=prefix["prefix_hits"],
            misses=prefix["prefix_misses"],
            reused_tokens=prefix["prefix_reused_tokens"],
            read_tokens=prefix["prompt_tokens_read"],
            evictions=prefix["prefix_evictions"],
            cached_lanes=int(stats.get("cached_lanes", 0)),
            cached_bytes=int(stats.get("cached_kv_bytes", 0)),
            lane_kv_bytes=int(stats.get("lane_kv_bytes", 0)),
        )
        if not self._stopping:
            self.notifier.status(self.status_line())
            self._announce(pressure=snapshot.level.label)

    def _announce(self, **changes: str) -> None:
        """Update the mDNS TXT record when something it carries changed."""
        adv = self._advertiser
        if adv is None or self._stopping:
            return
        current = adv.announcement
        if all(getattr(current, k) == v for k, v in changes.items()):
            return
        self._spawn(adv.update(**changes))

    def _on_engine_state(self, state: str) -> None:
        if self._built is None or self._stopping:
            return
        info = self.engine.info
        if state == "ready" and info is not None:
            self.admission.set_max_active(info.lanes * info.max_batch_size)
            self.metrics.set_model(
                self.engine.model.name, self.engine.model.version, info.execution_provider
            )
            self._announce(
                model=self.engine.model.name,
                model_version=self.engine.model.version,
                execution_provider=info.execution_provider,
            )
        self.notifier.status(self.status_line())
        self._spawn(self._set_health(state == "ready" and not self._refusing_unsigned()))

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

    def _engine_alive(self) -> bool:
        # A restarting engine is handled by the supervisor; a silent one is wedged.
        return (
            self.engine.state != "ready" or self.engine.last_sign_of_life_age_s < _ENGINE_LIVENESS_S
        )

    # -- lifecycle ------------------------------------------------------------------------

    def _build(self) -> BuiltServer:
        cfg = self.config
        if (
            any(listener.security in ("tls", "mtls") for listener in self._plan)
            or any(needs_tls(cfg.tls, address) for address in cfg.http.listen)
            or cfg.discovery.enabled
        ):
            self.device_cert = ensure_device_certificate(cfg.tls)
        # One authenticator and one set of rate-limit buckets for both front ends.
        authenticator = Authenticator.from_config(cfg.tls, cfg.auth)
        limiter = RateLimiter(cfg.auth)
        auth = AuthInterceptor(authenticator, limiter, MethodRoles())
        if cfg.http.listen:
            app = build_app(
                chat=self._chat,
                models=self._model_entries,
                ready=self._http_ready,
                auth=HttpAuth(authenticator, limiter, accept_any_token=cfg.http.accept_any_token),
                limits=cfg.engine,
                max_body_bytes=cfg.http.max_body_bytes,
                sse_ping_interval_s=cfg.http.sse_ping_interval_s,
            )
            self._http = HttpServer(
                app, cfg.http, cfg.tls, self.device_cert, grace_s=cfg.server.grace_s
            )
        return build_server(
            cfg.server,
            self._api,
            plan=self._plan,
            tls=cfg.tls,
            device=self.device_cert,
            operator=self._operator,
            extra_interceptors=[auth],
        )

    def _bound_listen(self) -> list[str]:
        """``server.listen`` with each TCP address's bound port (``:0`` resolved)."""
        if self._built is None:
            return []
        return [
            f"{a.rpartition(':')[0]}:{self._built.port_of(a)}"
            for a in self.config.server.listen
            if not a.startswith("unix:")
        ]

    async def _advertise(self) -> None:
        discovery = self.config.discovery
        if not discovery.enabled or self.device_cert is None:
            return
        local = await asyncio.to_thread(local_addresses)
        endpoint = advertised_endpoint(self._bound_listen(), local, discovery.interfaces)
        if endpoint is None:
            # Advertising an address nobody can connect to would only mislead clients.
            _log.info(
                "mDNS: not advertising: the server listens on no LAN address (server.listen = %s)",
                ", ".join(self.config.server.listen),
            )
            return
        addresses, port = endpoint
        # The OpenAI-compatible API too, when it listens on those same addresses.
        http = advertised_http(
            self._http.bound if self._http else [], addresses, local, discovery.interfaces
        )
        info = self.engine.info
        snapshot = self.pressure.snapshot
        self._advertiser = Advertiser(
            discovery,
            port=port,
            addresses=addresses,
            announcement=BoxAnnouncement(
                fingerprint=self.device_cert.fingerprint,
                device_id=self.device_id,
                model=self.engine.model.name,
                model_version=self.engine.model.version,
                execution_provider=info.execution_provider if info else "",
                pressure=snapshot.level.label if snapshot else "ok",
                http_port=int(http.rpartition(":")[2]) if http else None,
                http_tls=http is not None and needs_tls(self.config.tls, http),
            ),
        )
        try:
            await self._advertiser.start()
        except EdgeAgentError as exc:
            # mDNS is a convenience: a LAN without multicast must not stop the service.
            _log.warning("mDNS advertisement failed; serving without it: %s", exc.message)
            self._advertiser = None
        except Exception:
            _log.exception("mDNS advertisement failed unexpectedly; serving without it")
            self._advertiser = None

    def _load_documents(self) -> None:
        """The last good policy and credential; a bad file is logged and ignored."""
        for name, load in (("policy", self.policies.load), ("credential", self.credentials.load)):
            try:
                load()
            except EdgeAgentError as exc:
                _log.error("stored %s refused: %s", name, exc.message)

    async def start(self) -> None:
        asyncio.get_running_loop().set_exception_handler(handle_loop_exception)
        if self.config.auth.allow_anonymous_loopback:
            _log.warning(
                "auth.allow_anonymous_loopback: every local user may chat over loopback without "
                "a token (the demo's setting; an installed box should not use it)"
            )
        limit_malloc_arenas(self.config.server.malloc_arena_max)
        self._built = self._build()
        await self._set_health(False)
        await self.pressure.start()
        self.pressure.add_listener(self.admission.on_snapshot)
        self.pressure.add_listener(self._on_pressure)
        if self.config.metrics.enabled:
            self._metrics_server = MetricsServer(
                self.metrics, self.config.metrics.address, self.config.metrics.port
            )
            self._metrics_server.start()
        active = await asyncio.to_thread(self.bundles.recover)
        bundle_dir = self.bundles.active_model_dir()
        if active is not None and bundle_dir is not None:
            self.engine.use_model(bundle_dir)
        await asyncio.to_thread(self._load_documents)
        # Reservations a previous process left open (it died mid-call) count at worst case.
        reconciled = await asyncio.to_thread(self.ledger.reconcile)
        if reconciled:
            _log.warning("settled %d cloud reservations left open at worst case", reconciled)
        self._apply_air_gap()
        self.notifier.status(f"loading {self.engine.model.name}")
        async with extending_timeout(self.notifier):
            await self.engine.start()
        self._on_engine_state(self.engine.state)
        await self._built.server.start()
        secure_unix_sockets(self._built.bound, self.config.tls.admin_socket_mode)
        if self._http is not None:
            await self._http.start()
            if self.config.http.accept_any_token:
                _log.warning(
                    "the HTTP API is an open demo: any API key is accepted from loopback "
                    "(http.accept_any_token); an installed box refuses unknown tokens"
                )
        await self._set_health(self.engine.state == "ready" and not self._refusing_unsigned())
        await self._advertise()
        await self.connectivity.start()
        if self.bundles.inbox_dir is not None:
            watcher = InboxWatcher(
                self.bundles,
                self.bundles.inbox_dir,
                poll_seconds=self.config.bundles.inbox_poll_seconds,
            )
            self._inbox_task = asyncio.create_task(watcher.run(), name="bundle-inbox")
        self._watchdog.add_check("engine", self._engine_alive)
        if self.notifier.watchdog_usec is not None:
            self._watchdog.start()
        _settle_heap()
        self.notifier.ready(self.status_line())
        _log.info("serving %s (ports %s)", self.status_line(), self.ports)

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
        self.notifier.stopping(
            "draining streams"
            if self._start_failure is None
            else f"stopping after a failed start: {self._start_failure}"
        )
        if self._advertiser is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._advertiser.stop()  # goodbye packets: clients forget us now
        # Both front ends refuse new calls at once and wait up to `grace` for running ones.
        stops = []
        if self._built is not None:
            stops.append(self._built.server.stop(grace))
        if self._http is not None:
            stops.append(self._http.stop())
        await asyncio.gather(*stops)
        await self._watchdog.stop()
        if self._inbox_task is not None:
            self._inbox_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._inbox_task
        await self.connectivity.stop()
        await self.cloud.aclose()
        await self.engine.stop()
        await self.pressure.stop()
        if self._metrics_server is not None:
            await self._metrics_server.aclose()
        self.audit.close()
        self.ledger.close()
        self.notifier.close()
        set_air_gap(self, False)  # this agent's hold only: others in the process keep theirs
        _log.info("stopped")

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def serve(self) -> None:
        """Start, serve until :meth:`request_stop`, then stop gracefully."""
        try:
            await self.start()
        except BaseException as exc:
            # Said where an operator looks first (systemctl status), not "draining streams".
            self._start_failure = (
                exc.message if isinstance(exc, EdgeAgentError) else type(exc).__name__
            )
            _log.error("start failed: %s", self._start_failure)
            self.notifier.status(f"start failed: {self._start_failure}")
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

    async def reload(self) -> None:
        """SIGHUP: re-read policy, credential and the reloadable config keys; keep streams."""
        self.notifier.reloading("reloading configuration")
        if self._config_path is not None:
            try:
                new = await asyncio.to_thread(load_config, self._config_path)
            except ConfigError as exc:
                _log.error("reload refused, keeping the running configuration: %s", exc.message)
                new = None
            if new is not None:
                logging.getLogger().setLevel(new.logging.level)
                self.chat_path.set_overrides(new.policy.overrides)
                self._apply_air_gap()  # [policy] air_gapped may have changed
                fixed = [
                    f.name
                    for f in dataclasses.fields(new)
                    if f.name not in ("source", "logging", "policy")
                    and getattr(new, f.name) != getattr(self.config, f.name)
                ]
                if fixed:
                    _log.warning("changed sections need a restart: %s", ", ".join(fixed))
                self.config = dataclasses.replace(
                    self.config, logging=new.logging, policy=new.policy
                )
        await asyncio.to_thread(self._load_documents)
        self._apply_air_gap()
        self.notifier.ready(self.status_line())
        _log.info("reloaded")

    async def run(self) -> None:
        """:meth:`serve` until SIGTERM or SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        try:
            await self.serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
