"""Slots on disk, the ``current`` pointer, release counters and crash recovery.

Layout under ``<state>/bundles``::

    slots/a/ b/ c/        complete bundle folders (the model dir handed to the engine)
    staging/<random>/     an archive being extracted; never referenced by the pointer
    staging/inbox-*.tar   private copies of inbox files (see _inbox.py)
    trash/<random>/       folders being deleted (a rename first, so deletion is atomic)
    uploads/              partial uploads (see _upload.py)
    current.json          {"active", "previous", "state": "committed"|"trial", "pending"}
    releases.json         {bundle name: highest committed release}  (anti-rollback)

Three slots, so an install never touches the two bundles that matter: the active one and
the previous known-good one (the rollback target). A new bundle goes into the free slot;
only its commit retires the old rollback target. A failed or interrupted install therefore
leaves both in place.

Only ``current.json`` decides what is active; it is replaced with write-temp + fsync +
rename + fsync(dir). State ``trial`` means the engine was switched to ``pending`` and the
health probe never confirmed it: recovery keeps ``active`` and drops ``pending``. Anything a
crash leaves behind (staging, trash, temp files, a slot the pointer does not name) is
removed by ``recover``.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.bundles._fsutil import atomic_write, fsync_dir, remove_tree
from edge_agent.errors import BundleError

__all__ = ["SLOTS", "Pointer", "SlotStore"]

_log = logging.getLogger(__name__)

SLOTS = ("a", "b", "c")
PointerState = Literal["committed", "trial"]


@dataclass(frozen=True, slots=True)
class Pointer:
    active: str | None = None
    previous: str | None = None
    state: PointerState = "committed"
    # The slot being activated (state "trial"): the engine may be on it, unconfirmed.
    pending: str | None = None

    def free(self) -> str:
        """The slot a new bundle goes into: neither the active nor the rollback target."""
        return next(s for s in SLOTS if s not in (self.active, self.previous))

    def settled(self) -> Pointer:
        return Pointer(self.active, self.previous)


class SlotStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.slots = root / "slots"
        self.staging = root / "staging"
        self.trash = root / "trash"
        self.uploads = root / "uploads"
        self._pointer = root / "current.json"
        self.releases_path = root / "releases.json"

    def ensure(self) -> None:
        for d in (self.root, self.slots, self.staging, self.trash, self.uploads):
            d.mkdir(parents=True, exist_ok=True, mode=0o750)

    def slot_dir(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise BundleError(f"unknown slot {slot!r}")
        return self.slots / slot

    # -- pointer -------------------------------------------------------------------------
    def read_pointer(self) -> Pointer:
        return self._load_pointer() or Pointer()

    def _load_pointer(self) -> Pointer | None:
        """The pointer; ``None`` when the file exists but is not one we wrote."""
        try:
            raw = json.loads(self._pointer.read_bytes())
        except FileNotFoundError:
            return Pointer()
        except (OSError, ValueError):
            # Atomic replace makes a torn pointer impossible; garbage means outside meddling.
            return None
        if not isinstance(raw, dict):
            return None
        active, previous, state = raw.get("active"), raw.get("previous"), raw.get("state")
        pending = raw.get("pending")
        if active not in (*SLOTS, None) or previous not in (*SLOTS, None) or active == previous:
            return None
        if state not in ("committed", "trial") or pending not in (*SLOTS, None):
            return None
        if state == "trial" and "pending" not in raw:
            # Written by a two-slot version: "active" was the unconfirmed one.
            return Pointer(previous, active) if previous else Pointer(pending=active)
        if pending is not None and pending == active:
            return None
        return Pointer(active, previous if active else None, state, pending)

    def write_pointer(self, pointer: Pointer) -> None:
        data = {
            "active": pointer.active,
            "previous": pointer.previous,
            "state": pointer.state,
            "pending": pointer.pending,
        }
        atomic_write(self._pointer, json.dumps(data).encode())

    # -- anti-rollback -------------------------------------------------------------------
    def release_floor(self) -> int:
        """The highest release ever committed here, whatever its name (fleet-wide counter)."""
        return max(self.releases().values(), default=0)

    def releases(self) -> dict[str, int]:
        try:
            raw = json.loads(self.releases_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Never fall back to "nothing installed": that would re-open every rollback.
            raise BundleError("the release counter file is unreadable; refusing installs") from exc
        return {str(k): int(v) for k, v in raw.items()}

    def record_release(self, name: str, release: int) -> None:
        current = self.releases()
        if release > current.get(name, 0):
            current[name] = release
            atomic_write(self.releases_path, json.dumps(current, sort_keys=True).encode())

    # -- slots ---------------------------------------------------------------------------
    def new_staging_dir(self) -> Path:
        self.ensure()
        return self.staging / uuid.uuid4().hex

    def discard(self, path: Path) -> None:
        """Rename into trash (atomic), then delete: a crash never leaves a half-deleted slot."""
        if not path.exists() and not path.is_symlink():
            return
        target = self.trash / uuid.uuid4().hex
        os.replace(path, target)
        fsync_dir(path.parent)
        remove_tree(target)

    def place(self, staged: Path, pointer: Pointer) -> str:
        """Move a verified staging folder into the free slot; the pointer is not changed.

        Until a pointer names it the slot is a leftover to recovery, so a crash from here
        on costs nothing but the new bundle.
        """
        slot = pointer.free()
        self.discard(self.slot_dir(slot))
        os.replace(staged, self.slot_dir(slot))
        fsync_dir(self.slots)
        return slot

    def recover(self) -> Pointer:
        """Clean what a crash left and settle the pointer; the caller verifies the result."""
        self.ensure()
        for d in (self.staging, self.trash):
            for p in d.iterdir():
                remove_tree(p)
        for p in self.root.glob(".*.tmp"):
            p.unlink(missing_ok=True)
        loaded = self._load_pointer()
        if loaded is None:
            # Never delete bundles because of a bad pointer: rebuild it from the slots (the
            # caller verifies them and drops what fails), newest release first.
            _log.error("current.json is unreadable; rebuilding it from the slots")
            slots = sorted(
                (s for s in SLOTS if (self.slot_dir(s) / "bundle.json").is_file()),
                key=self._release_of,
                reverse=True,
            )
            order: list[str | None] = [*slots, None, None]
            loaded = Pointer(order[0], order[1])
            self.write_pointer(loaded)
        pointer = loaded
        if pointer.state == "trial" or pointer.pending is not None:
            # The switch was never confirmed by a health probe: the bundle that was active
            # wins and the known-good rollback target stays; the unconfirmed one is dropped
            # below (unless it was that rollback target itself).
            pointer = pointer.settled()
            self.write_pointer(pointer)
        for slot in SLOTS:
            if slot not in (pointer.active, pointer.previous):
                self.discard(self.slot_dir(slot))
        for named in (pointer.active, pointer.previous):
            if named and not self.slot_dir(named).is_dir():
                pointer = self._forget(pointer, named)
        return pointer

    def _release_of(self, slot: str) -> int:
        try:
            return int(json.loads((self.slot_dir(slot) / "bundle.json").read_bytes())["release"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def _forget(self, pointer: Pointer, slot: str) -> Pointer:
        if pointer.active == slot:
            pointer = Pointer(pointer.previous, None)
        else:
            pointer = Pointer(pointer.active, None, pointer.state, pointer.pending)
        self.write_pointer(pointer)
        return pointer

    def forget(self, pointer: Pointer, slot: str) -> Pointer:
        """Drop a slot that failed verification at start-up."""
        pointer = self._forget(pointer, slot)
        self.discard(self.slot_dir(slot))
        return pointer
