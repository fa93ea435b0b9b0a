"""BundleManager: stage -> verify -> trial load -> atomic switch -> health probe -> commit.

On any failure the old bundle stays active, the previous known-good bundle stays the
rollback target, and the raised error says which step refused and why. Unpacking and
verifying (the long, blocking part, on bytes from outside) run in threads in a private
staging folder before the lock is taken; the lock only orders the slot moves and switches,
so a slow archive never holds up a rollback. Every outcome is an event: daemon log + audit.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from edge_agent.audit import AuditLog
from edge_agent.bundles._admission import (
    BoxRules,
    check_bundle,
    check_release,
    check_signatures,
)
from edge_agent.bundles._archive import ArchiveLimits, unpack_bundle
from edge_agent.bundles._config import BundlesConfig
from edge_agent.bundles._events import BundleEvents
from edge_agent.bundles._format import BundleManifest, ModelFacts, agent_version, load_manifest
from edge_agent.bundles._host import ModelHost
from edge_agent.bundles._store import Pointer, SlotStore
from edge_agent.bundles._truststore import TrustStore
from edge_agent.bundles._upload import UploadReceiver
from edge_agent.errors import (
    BundleError,
    EdgeAgentError,
    FailedPrecondition,
    ResourceExhausted,
)

__all__ = ["BundleInfo", "BundleManager", "InstallResult"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BundleInfo:
    name: str
    version: str
    release: int
    slot: str
    active: bool
    expires_at: datetime | None
    signer_key_ids: tuple[str, ...]
    model: ModelFacts


@dataclass(frozen=True, slots=True)
class InstallResult:
    bundle: BundleInfo
    outcome: Literal["activated", "installed"]


def _label(m: BundleManifest) -> str:
    return f"{m.name} {m.version}"


class BundleManager:
    def __init__(
        self,
        config: BundlesConfig,
        *,
        state_dir: Path,
        host: ModelHost,
        running_version: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
        audit: AuditLog | None = None,
    ) -> None:
        self.config = config
        paths = config.paths(state_dir)
        self.store = SlotStore(paths.root)
        self.trust = TrustStore(paths.trust_store)
        self.inbox_dir = paths.inbox
        self.events = BundleEvents(audit)
        self._host = host
        self._version = running_version or agent_version()
        self._clock = clock
        self._free_bytes = free_bytes
        self._lock = asyncio.Lock()
        self._signers: dict[str, tuple[str, ...]] = {}
        # Set at start-up when signed bundles were installed here but none is left to serve.
        self.fallback_reason: str | None = None
        self.uploads = UploadReceiver(
            self.store.uploads,
            max_bytes=config.max_bundle_bytes,
            chunk_limit=config.upload_chunk_bytes,
            free_space_margin=config.free_space_margin_bytes,
            free_bytes=free_bytes,
        )

    # -- start-up ------------------------------------------------------------------------
    def recover(self) -> BundleInfo | None:
        """Clean up after a crash, re-verify the slots, return the active bundle (if any)."""
        pointer = self.store.recover()
        self.uploads.cleanup_stale(self.config.upload_ttl_hours * 3600)
        for slot in (pointer.active, pointer.previous):
            if slot is None:
                continue
            try:
                manifest = self._check_slot(slot, full=self.config.verify_on_start)
            except EdgeAgentError as exc:
                self.events.record_sync(
                    "dropped", f"slot {slot} fails verification: {exc.message}", source="daemon"
                )
                pointer = self.store.forget(pointer, slot)
                continue
            if slot == pointer.active:
                # Closes the window between committing the pointer and recording the release.
                self.store.record_release(manifest.name, manifest.release)
                if manifest.expires_at and manifest.expires_at <= self._clock():
                    _log.warning(
                        "the active bundle %s has expired; push a newer one", _label(manifest)
                    )
        self.fallback_reason = None
        if pointer.active is None and self.store.release_floor() > 0:
            self.fallback_reason = (
                "no valid signed bundle is installed (the last one failed verification or was "
                "removed); serving the built-in model until a bundle is pushed"
            )
            self.events.record_sync("fallback", self.fallback_reason, source="daemon")
        return self._info(pointer, pointer.active) if pointer.active else None

    def _check_slot(self, slot: str, *, full: bool) -> BundleManifest:
        folder = self.store.slot_dir(slot)
        if full:
            _, report = check_signatures(folder, self.trust.load(), self.config.threshold)
            self._signers[slot] = report.valid_key_ids
        return load_manifest(folder)

    # -- queries -------------------------------------------------------------------------
    def active_model_dir(self) -> Path | None:
        pointer = self.store.read_pointer()
        return self.store.slot_dir(pointer.active) if pointer.active else None

    def list_bundles(self) -> list[BundleInfo]:
        pointer = self.store.read_pointer()
        return [self._info(pointer, s) for s in (pointer.active, pointer.previous) if s]

    def _info(self, pointer: Pointer, slot: str) -> BundleInfo:
        m = load_manifest(self.store.slot_dir(slot))
        return BundleInfo(
            name=m.name,
            version=m.version,
            release=m.release,
            slot=slot,
            active=slot == pointer.active,
            expires_at=m.expires_at,
            signer_key_ids=self._signers.get(slot, ()),
            model=m.model,
        )

    # -- checks --------------------------------------------------------------------------
    def _rules(self) -> BoxRules:
        return BoxRules(
            threshold=self.config.threshold,
            require_expiry=self.config.require_expiry,
            running_version=self._version,
            release_floor=self.store.release_floor(),
        )

    def _check(
        self, folder: Path, *, anti_rollback: bool
    ) -> tuple[BundleManifest, tuple[str, ...]]:
        manifest, report = check_bundle(
            folder, self.trust.load(), self._rules(), now=self._clock(), anti_rollback=anti_rollback
        )
        return manifest, report.valid_key_ids

    # -- install -------------------------------------------------------------------------
    async def install_archive(
        self,
        archive: Path,
        *,
        activate: bool = True,
        consume: bool = False,
        source: str = "operator",
        name: str | None = None,
    ) -> InstallResult:
        """Install a bundle archive (upload, inbox copy or local file); ``consume`` deletes it.

        ``source`` says who sent it and ``name`` what it was called there, for the records:
        every refusal is logged and audited with its reason before it is raised.
        """
        await self.events.record("received", name or archive.name, source=source)
        manifest: BundleManifest | None = None
        try:
            if not activate and self.store.read_pointer().active is None:
                raise FailedPrecondition("no active bundle: the first bundle must be activated")
            staged = self.store.new_staging_dir()
            try:
                m, signers = await asyncio.to_thread(self._stage, archive, staged, consume)
                manifest = m  # named in a refusal from here on
                async with self._lock:
                    result = await self._install_staged(staged, m, signers, activate)
            finally:
                await asyncio.to_thread(self.store.discard, staged)  # gone if it was placed
        except EdgeAgentError as exc:
            await self._refused(exc.message, source, manifest)
            raise
        except Exception:
            _log.exception("bundle install failed")
            await self._refused("internal error (see the daemon log)", source, manifest)
            raise
        event = "activated" if result.outcome == "activated" else "installed"
        await self.events.record(
            event,
            f"slot {result.bundle.slot}",
            source=source,
            bundle=_label(m),
            release=m.release,
        )
        return result

    async def _refused(self, reason: str, source: str, manifest: BundleManifest | None) -> None:
        await self.events.record(
            "refused",
            reason,
            source=source,
            bundle=_label(manifest) if manifest else "",
            release=manifest.release if manifest else 0,
        )

    async def _install_staged(
        self, staged: Path, manifest: BundleManifest, signers: tuple[str, ...], activate: bool
    ) -> InstallResult:
        pointer = self.store.read_pointer()
        if not activate and pointer.active is None:
            raise FailedPrecondition("no active bundle: the first bundle must be activated")
        # Another install may have committed while this one was verifying.
        check_release(manifest, self.store.release_floor())
        slot = await asyncio.to_thread(self.store.place, staged, pointer)
        self._signers[slot] = signers
        if not activate:
            # The new bundle becomes the rollback target; the old one is retired.
            old_previous = pointer.previous
            pointer = Pointer(pointer.active, slot)
            self.store.write_pointer(pointer)
            if old_previous is not None:
                await asyncio.to_thread(self.store.discard, self.store.slot_dir(old_previous))
            return InstallResult(self._info(pointer, slot), "installed")
        pointer = await self._activate(slot, manifest, pointer)
        return InstallResult(self._info(pointer, slot), "activated")

    def _stage(
        self, archive: Path, staged: Path, consume: bool
    ) -> tuple[BundleManifest, tuple[str, ...]]:
        try:
            size = archive.stat().st_size
            free = self._free_bytes(self.store.root)
            if free < size + self.config.free_space_margin_bytes:
                raise ResourceExhausted(f"not enough disk space to stage {size} bytes")
            unpack_bundle(archive, staged, self._limits())
        finally:
            if consume:  # a completed upload is never resumed: drop it, accepted or not
                archive.unlink(missing_ok=True)
        return self._check(staged, anti_rollback=True)

    async def rollback(self, *, source: str = "operator") -> BundleInfo:
        """Switch back to the previous slot (verify + trial load + probe as for any activation)."""
        manifest: BundleManifest | None = None
        try:
            pointer = self.store.read_pointer()
            if pointer.previous is None:
                raise FailedPrecondition("there is no previous bundle to roll back to")
            target = pointer.previous
            # Hashing a whole model takes long: do it before taking the lock.
            m, signers = await asyncio.to_thread(
                self._check, self.store.slot_dir(target), anti_rollback=False
            )
            manifest = m
            async with self._lock:
                # Slots are never reused while named, so an unchanged pointer means the
                # verified folder is still the rollback target.
                now = self.store.read_pointer()
                if now.settled() != pointer.settled():
                    raise FailedPrecondition("the installed bundles changed meanwhile; retry")
                self._signers[target] = signers
                pointer = await self._activate(target, m, pointer)
        except EdgeAgentError as exc:
            await self._refused(f"rollback: {exc.message}", source, manifest)
            raise
        assert pointer.active is not None
        info = self._info(pointer, pointer.active)
        await self.events.record(
            "rolled_back",
            f"slot {info.slot}",
            source=source,
            bundle=_label(m),
            release=m.release,
        )
        return info

    async def _activate(self, slot: str, manifest: BundleManifest, pointer: Pointer) -> Pointer:
        """Switch to ``slot``; on failure the pointer and both known bundles stay as they were."""
        new_dir = self.store.slot_dir(slot)
        old, spare = pointer.active, pointer.previous
        step = "trial load"
        switched = False
        try:
            async with asyncio.timeout(self.config.trial_load_timeout_seconds):
                await self._host.trial_load(new_dir)
            step = "switch"
            self.store.write_pointer(Pointer(old, spare, "trial", slot))
            switched = True
            await self._host.switch_to(new_dir)
            step = "health probe"
            async with asyncio.timeout(self.config.health_probe_timeout_seconds):
                await self._host.health_probe()
        except BaseException as exc:
            await self._undo(slot, pointer, switched=switched)
            if isinstance(exc, EdgeAgentError):
                raise BundleError(f"{step} of {manifest.name} failed: {exc.message}") from exc
            if isinstance(exc, TimeoutError):
                raise BundleError(f"{step} of {manifest.name} timed out") from exc
            if isinstance(exc, Exception):
                _log.exception("%s of bundle %s failed", step, manifest.name)
                raise BundleError(f"{step} of {manifest.name} failed (internal error)") from exc
            raise
        committed = Pointer(slot, old)
        self.store.write_pointer(committed)
        self.store.record_release(manifest.name, manifest.release)
        self.fallback_reason = None
        if spare is not None and spare not in (slot, old):
            await asyncio.to_thread(self.store.discard, self.store.slot_dir(spare))
        return committed

    async def _undo(self, slot: str, pointer: Pointer, *, switched: bool) -> None:
        if switched and pointer.active is not None:
            try:
                await self._host.switch_to(self.store.slot_dir(pointer.active))
            except Exception:
                _log.exception("switching back to slot %s failed", pointer.active)
        self.store.write_pointer(pointer.settled())
        if slot not in (pointer.active, pointer.previous):  # a new bundle, not the target
            await asyncio.to_thread(self.store.discard, self.store.slot_dir(slot))

    def _limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_total_bytes=self.config.max_bundle_bytes,
            max_file_bytes=self.config.max_file_bytes,
            max_files=self.config.max_files,
        )
