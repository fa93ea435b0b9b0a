"""What a box admits: the one set of rules the daemon and offline ``bundle verify`` share.

A bundle is admitted when, in this order:

1. its signatures verify against the box's trust store (keys with the ``bundle`` role, none
   revoked) with at least ``max(box threshold, trust store threshold)`` distinct keys;
2. it carries an expiry (unless the box is configured for lab use) that has not passed;
3. this agent is at least its ``min_agent_version``;
4. its release is above every release ever committed on the box, whatever the bundle's
   name: the fleet numbers releases from one counter, so an old bundle of another model
   line (a lab build, a retired model) cannot be replayed to replace a newer one;
5. its facts tell the truth about context: ``bundle.json``'s ``model.context_length`` is
   the context the engine will serve (the smaller of ``search.max_length`` and
   ``model.context_length`` in ``genai_config.json``), which admission sizes requests by.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent.bundles._format import BundleManifest, check_admissible, load_manifest
from edge_agent.bundles._signing import VerificationReport, require_verified, verify_bundle
from edge_agent.bundles._truststore import TrustDocument
from edge_agent.errors import BundleError, SignatureError
from edge_agent.pressure import context_from_genai_config, read_genai_config

__all__ = ["BoxRules", "check_bundle", "check_context", "check_release", "check_signatures"]


@dataclass(frozen=True, slots=True)
class BoxRules:
    """A box's admission settings; ``release_floor`` None means "not known here" (offline)."""

    threshold: int
    require_expiry: bool
    running_version: str
    release_floor: int | None


def check_release(manifest: BundleManifest, floor: int) -> None:
    if manifest.release <= floor:
        raise BundleError(
            f"anti-rollback: release {manifest.release} of {manifest.name} is not newer than "
            f"release {floor}, the highest this box has committed (of any bundle name)"
        )


def check_signatures(
    folder: Path, doc: TrustDocument, threshold: int
) -> tuple[BundleManifest, VerificationReport]:
    """Rule 1 alone: what start-up re-checks on installed bundles (an installed bundle that
    has since expired keeps serving; expiry stops installs, it does not brick a box)."""
    keys = doc.keys_for("bundle")
    if not keys:
        raise SignatureError("the trust store holds no key with the bundle role")
    other = frozenset(k.key_id for k in doc.keys) - frozenset(keys)
    report = verify_bundle(
        folder, keys, max(threshold, doc.threshold), revoked=doc.revoked, other_roles=other
    )
    require_verified(report)
    return load_manifest(folder), report


def check_context(folder: Path, manifest: BundleManifest) -> None:
    """Refuse a bundle whose stated context is not what its engine config will serve."""
    try:
        raw: dict[str, Any] = read_genai_config(folder)
    except FileNotFoundError:
        return  # not a model this agent can load: the trial load says so
    except (OSError, ValueError) as exc:
        raise BundleError("genai_config.json is not a readable JSON object") from exc
    try:
        served = context_from_genai_config(raw)
    except ValueError as exc:
        raise BundleError(f"genai_config.json: {exc}") from exc
    stated = manifest.model.context_length
    if stated != served:
        search = raw.get("search")
        max_length = search.get("max_length") if isinstance(search, dict) else None
        raise BundleError(
            f"bundle.json says context_length {stated}, but the engine would serve {served} "
            f"(genai_config.json: search.max_length {max_length}, model.context_length "
            f"{raw['model']['context_length']}); rebuild the bundle with `edge-agent bundle "
            f"build` (it records {served}), or set both lengths in genai_config.json to the "
            "context wanted before signing"
        )


def check_bundle(
    folder: Path, doc: TrustDocument, rules: BoxRules, *, now: datetime, anti_rollback: bool = True
) -> tuple[BundleManifest, VerificationReport]:
    """Raise the box's refusal (SignatureError / BundleError), else the manifest + report."""
    manifest, report = check_signatures(folder, doc, rules.threshold)
    check_admissible(
        manifest,
        now=now,
        running_version=rules.running_version,
        require_expiry=rules.require_expiry,
    )
    if anti_rollback and rules.release_floor is not None:
        check_release(manifest, rules.release_floor)
    check_context(folder, manifest)
    return manifest, report
