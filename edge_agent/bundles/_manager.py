"""BundleManager: stage -> verify -> trial load -> atomic switch -> health probe -> commit.

On any failure the old bundle stays active and the raised error says which step refused
and why. One install or rollback runs at a time. Blocking work (extraction, hashing) runs
in threads so the daemon's event loop keeps serving.
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

from edge_agent.bundles._archive import ArchiveLimits, unpack_bundle
from edge_agent.bundles._config import BundlesConfig
from edge_agent.bundles._format import (
    BundleManifest,
    ModelFacts,
    agent_version,
    check_admissible,
    load_manifest,
)
from edge_agent.bundles._host import ModelHost
from edge_agent.bundles._signing import VerificationReport, require_verified, verify_bundle
from edge_agent.bundles._store import Pointer, SlotStore
from edge_agent.bundles._truststore import TrustStore
from edge_agent.bundles._upload import UploadReceiver
from edge_agent.errors import (
    BundleError,
    EdgeAgentError,
    FailedPrecondition,
    ResourceExhausted,
    SignatureError,
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
    ) -> None:
        self.config = config
        paths = config.paths(state_dir)
        self.store = SlotStore(paths.root)
        self.trust = TrustStore(paths.trust_store)
        self.inbox_dir = paths.inbox
        self._host = host
        self._version = running_version or agent_version()
        self._clock = clock
        self._free_bytes = free_bytes
        self._lock = asyncio.Lock()
        self._signers: dict[str, tuple[str, ...]] = {}
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
                _log.error("bundle slot %s fails verification, dropping it: %s", slot, exc.message)
                pointer = self.store.forget(pointer, slot)
                continue
            if slot == pointer.active:
                # Closes the window between committing the pointer and recording the release.
                self.store.record_release(manifest.name, manifest.release)
                if manifest.expires_at and manifest.expires_at <= self._clock():
                    _log.warning(
                        "the active bundle %s has expired; push a newer one", manifest.name
                    )
        return self._info(pointer, pointer.active) if pointer.active else None

    def _check_slot(self, slot: str, *, full: bool) -> BundleManifest:
        folder = self.store.slot_dir(slot)
        if full:
            _, report = self._verify(folder)
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
    def _verify(self, folder: Path) -> tuple[BundleManifest, VerificationReport]:
        doc = self.trust.load()
        keys = doc.keys_for("bundle")
        if not keys:
            raise SignatureError("the trust store holds no key with the bundle role")
        report = verify_bundle(
            folder, keys, max(self.config.threshold, doc.threshold), revoked=doc.revoked
        )
        require_verified(report)
        manifest = load_manifest(folder)
        return manifest, report

    def _check(
        self, folder: Path, *, anti_rollback: bool
    ) -> tuple[BundleManifest, tuple[str, ...]]:
        manifest, report = self._verify(folder)
        check_admissible(manifest, now=self._clock(), running_version=self._version)
        if anti_rollback:
            highest = self.store.releases().get(manifest.name, 0)
            if manifest.release <= highest:
                raise BundleError(
                    f"anti-rollback: release {manifest.release} of {manifest.name} is not newer "
                    f"than the installed release {highest}"
                )
        return manifest, report.valid_key_ids

    # -- install -------------------------------------------------------------------------
    async def install_archive(
        self, archive: Path, *, activate: bool = True, consume: bool = False
    ) -> InstallResult:
        """Install a bundle archive (upload, inbox or local file); ``consume`` deletes it."""
        async with self._lock:
            pointer = self.store.read_pointer()
            if not activate and pointer.active is None:
                raise FailedPrecondition("no active bundle: the first bundle must be activated")
            staged = self.store.new_staging_dir()
            try:
                manifest, signers = await asyncio.to_thread(self._stage, archive, staged, consume)
                slot, pointer = await asyncio.to_thread(self.store.place, staged, pointer)
            except BaseException:
                await asyncio.to_thread(self.store.discard, staged)
                raise
            self._signers[slot] = signers
            _log.info("bundle %s %s staged in slot %s", manifest.name, manifest.version, slot)
            if not activate:
                pointer = Pointer(pointer.active, slot, pointer.state)
                self.store.write_pointer(pointer)
                return InstallResult(self._info(pointer, slot), "installed")
            pointer = await self._activate(slot, manifest, pointer, discard_on_failure=True)
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

    async def rollback(self) -> BundleInfo:
        """Switch back to the previous slot (trial load + probe as for any activation)."""
        async with self._lock:
            pointer = self.store.read_pointer()
            if pointer.previous is None:
                raise FailedPrecondition("there is no previous bundle to roll back to")
            manifest, signers = await asyncio.to_thread(
                self._check, self.store.slot_dir(pointer.previous), anti_rollback=False
            )
            self._signers[pointer.previous] = signers
            pointer = await self._activate(
                pointer.previous, manifest, pointer, discard_on_failure=False
            )
            assert pointer.active is not None
            return self._info(pointer, pointer.active)

    async def _activate(
        self, slot: str, manifest: BundleManifest, pointer: Pointer, *, discard_on_failure: bool
    ) -> Pointer:
        new_dir = self.store.slot_dir(slot)
        old = pointer.active
        step = "trial load"
        switched = False
        try:
            async with asyncio.timeout(self.config.trial_load_timeout_seconds):
                await self._host.trial_load(new_dir)
            step = "switch"
            self.store.write_pointer(Pointer(slot, old, "trial"))
            switched = True
            await self._host.switch_to(new_dir)
            step = "health probe"
            async with asyncio.timeout(self.config.health_probe_timeout_seconds):
                await self._host.health_probe()
        except BaseException as exc:
            await self._undo(slot, old, switched=switched, discard=discard_on_failure)
            if isinstance(exc, EdgeAgentError):
                raise BundleError(f"{step} of {manifest.name} failed: {exc.message}") from exc
            if isinstance(exc, TimeoutError):
                raise BundleError(f"{step} of {manifest.name} timed out") from exc
            if isinstance(exc, Exception):
                _log.exception("%s of bundle %s failed", step, manifest.name)
                raise BundleError(f"{step} of {manifest.name} failed (internal error)") from exc
            raise
        committed = Pointer(slot, old, "committed")
        self.store.write_pointer(committed)
        self.store.record_release(manifest.name, manifest.release)
        _log.info("bundle %s %s active in slot %s", manifest.name, manifest.version, slot)
        return committed

    async def _undo(self, slot: str, old: str | None, *, switched: bool, discard: bool) -> None:
        if switched and old is not None:
            try:
                await self._host.switch_to(self.store.slot_dir(old))
            except Exception:
                _log.exception("switching back to slot %s failed", old)
        keep = None if discard else slot
        self.store.write_pointer(Pointer(old, keep if old else None, "committed"))
        if discard or old is None:
            await asyncio.to_thread(self.store.discard, self.store.slot_dir(slot))

    def _limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_total_bytes=self.config.max_bundle_bytes,
            max_file_bytes=self.config.max_file_bytes,
            max_files=self.config.max_files,
        )
