"""The ``[bundles]`` config section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent._tomlreader import TableReader

__all__ = ["BundlePaths", "BundlesConfig", "parse_bundles_config"]

_GIB = 1024**3
_MIB = 1024**2


@dataclass(frozen=True, slots=True)
class BundlePaths:
    """Where the bundle manager keeps its state, resolved against the daemon's state dir."""

    root: Path  # <state>/bundles: slots, staging, uploads, pointer, release counters
    trust_store: Path
    inbox: Path | None


@dataclass(frozen=True, slots=True)
class BundlesConfig:
    """Settings of the signed-bundle installer; every field has a safe default."""

    state_subdir: str = "bundles"
    # None: <state>/trust/truststore.json (shared with the policy and credentials engineers).
    trust_store: Path | None = None
    # The box's own floor for k-of-n; the effective threshold is max(this, the trust store's).
    threshold: int = 1
    # None: no inbox watcher (air-gap import off).
    inbox_dir: Path | None = None
    inbox_poll_seconds: float = 5.0
    max_bundle_bytes: int = 64 * _GIB
    max_file_bytes: int = 64 * _GIB
    max_files: int = 10_000
    upload_chunk_bytes: int = 4 * _MIB
    # Kept free after staging, so a full disk never breaks the serving slot or the journal.
    free_space_margin_bytes: int = 1 * _GIB
    upload_ttl_hours: float = 72.0
    verify_on_start: bool = True
    # Bundles without expires_at are refused unless this is a lab box (they never expire, so
    # a leaked one could be replayed for ever).
    require_expiry: bool = True
    # When signed bundles were installed here and none is left valid at start-up:
    # "degraded" serves the built-in demo model and says so in status; "refuse" serves no
    # chat at all (the operator service stays up, so a good bundle can be pushed).
    without_bundle: str = "degraded"
    # An inbox file must be copied into private storage within this time, or it is refused
    # (an hour: a 14 GB model from a USB 2 stick takes about ten minutes).
    inbox_copy_timeout_seconds: float = 3600.0
    trial_load_timeout_seconds: float = 900.0
    health_probe_timeout_seconds: float = 120.0

    def paths(self, state_dir: Path) -> BundlePaths:
        return BundlePaths(
            root=state_dir / self.state_subdir,
            trust_store=self.trust_store or state_dir / "trust" / "truststore.json",
            inbox=self.inbox_dir,
        )


def parse_bundles_config(reader: TableReader, *, base: Path | None = None) -> BundlesConfig:
    """Parse the ``[bundles]`` table; relative paths resolve against ``base`` (the config dir)."""
    d = BundlesConfig()
    state_subdir = reader.string("state_subdir", d.state_subdir)
    if not state_subdir or Path(state_subdir).is_absolute() or ".." in Path(state_subdir).parts:
        raise reader.error("state_subdir", "must be a relative folder name inside the state dir")
    cfg = BundlesConfig(
        state_subdir=state_subdir,
        trust_store=reader.optional_path("trust_store", base=base),
        threshold=reader.integer("threshold", d.threshold, min_value=1, max_value=64),
        inbox_dir=reader.optional_path("inbox_dir", base=base),
        inbox_poll_seconds=reader.number(
            "inbox_poll_seconds", d.inbox_poll_seconds, min_value=0.1, max_value=3600
        ),
        max_bundle_bytes=reader.integer("max_bundle_bytes", d.max_bundle_bytes, min_value=1024),
        max_file_bytes=reader.integer("max_file_bytes", d.max_file_bytes, min_value=1),
        max_files=reader.integer("max_files", d.max_files, min_value=2, max_value=1_000_000),
        upload_chunk_bytes=reader.integer(
            "upload_chunk_bytes", d.upload_chunk_bytes, min_value=1024, max_value=64 * _MIB
        ),
        free_space_margin_bytes=reader.integer(
            "free_space_margin_bytes", d.free_space_margin_bytes, min_value=0
        ),
        upload_ttl_hours=reader.number(
            "upload_ttl_hours", d.upload_ttl_hours, min_value=0.01, max_value=24 * 365
        ),
        verify_on_start=reader.boolean("verify_on_start", d.verify_on_start),
        require_expiry=reader.boolean("require_expiry", d.require_expiry),
        without_bundle=reader.string(
            "without_bundle", d.without_bundle, choices=("degraded", "refuse")
        ),
        inbox_copy_timeout_seconds=reader.number(
            "inbox_copy_timeout_seconds", d.inbox_copy_timeout_seconds, min_value=1
        ),
        trial_load_timeout_seconds=reader.number(
            "trial_load_timeout_seconds", d.trial_load_timeout_seconds, min_value=1
        ),
        health_probe_timeout_seconds=reader.number(
            "health_probe_timeout_seconds", d.health_probe_timeout_seconds, min_value=1
        ),
    )
    reader.finish()
    return cfg
