"""Sign and verify bundle folders in the OpenSSF model-signing format, with k-of-n thresholds.

Each signer writes ``signatures/<key-id>.sig``, a Sigstore bundle holding a DSSE-signed in-toto
statement over every file of the folder except ``signatures/`` (recorded as an ignore path in
the statement, so the official ``model_signing verify key`` CLI accepts any one of them).

Verification checks each signature's envelope against the trust store first and hashes the
folder once, however many signatures there are: the manifest comparison is where the time
goes on a multi-GB model.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import hashing, signing
from model_signing._signing import sign_ec_key, sign_sigstore_pb  # pinned ==1.1.1

from edge_agent.bundles._format import BUNDLE_JSON, SIGNATURES_DIR, load_manifest
from edge_agent.bundles._keys import key_id, load_private_key, short_id
from edge_agent.errors import BundleError, SignatureError

__all__ = [
    "SignatureCheck",
    "VerificationReport",
    "hash_folder",
    "sign_bundle",
    "verify_bundle",
]

_SIG_NAME = re.compile(r"^([0-9a-f]{64})\.sig$")
_MAX_SIGNATURES = 64
_MAX_SIG_BYTES = 1024 * 1024

Status = Literal[
    "valid", "unknown-key", "not-a-bundle-key", "revoked", "bad-signature", "content-mismatch"
]


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    key_id: str
    status: Status
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """The outcome of checking a folder against trusted keys; ``summary()`` is operator text."""

    threshold: int
    signatures: tuple[SignatureCheck, ...]
    missing_files: tuple[str, ...] = ()
    extra_files: tuple[str, ...] = ()
    changed_files: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())

    @property
    def valid_key_ids(self) -> tuple[str, ...]:
        return tuple(s.key_id for s in self.signatures if s.status == "valid")

    @property
    def ok(self) -> bool:
        return (
            self.threshold >= 1
            and len(self.valid_key_ids) >= self.threshold
            and not (self.missing_files or self.extra_files or self.changed_files or self.problems)
        )

    def summary(self) -> str:
        valid = self.valid_key_ids
        head = (
            f"verified: {len(valid)} valid signature(s), {self.threshold} required"
            if self.ok
            else f"refused: {len(valid)} valid signature(s), {self.threshold} required"
        )
        parts = [head]
        if not self.signatures:
            parts.append("no signature files")
        parts += [f"{k}: {', '.join(v)}" for k, v in self._file_lists() if v]
        parts += list(self.problems)
        parts += [
            f"key {short_id(s.key_id)}: {s.status}" + (f" ({s.detail})" if s.detail else "")
            for s in self.signatures
        ]
        return "; ".join(parts)

    def _file_lists(self) -> list[tuple[str, tuple[str, ...]]]:
        return [
            ("changed", self.changed_files),
            ("extra", self.extra_files),
            ("missing", self.missing_files),
        ]


def _hashing_config() -> Any:
    # git paths are NOT ignored: every byte in the folder except signatures/ must be signed.
    config = hashing.Config()  # type: ignore[no-untyped-call]
    return config.set_ignored_paths(paths=[SIGNATURES_DIR], ignore_git_paths=False)


def sign_bundle(folder: Path, private_key: Path, *, password: bytes | None = None) -> Path:
    """Add ``signatures/<key-id>.sig`` to a bundle folder and return its path."""
    load_manifest(folder)  # refuse to sign something that is not a bundle
    _refuse_links(folder)
    key = load_private_key(private_key, password)
    kid = key_id(key.public_key())
    sig_dir = folder / SIGNATURES_DIR
    sig_dir.mkdir(exist_ok=True)
    sig_path = sig_dir / f"{kid}.sig"
    try:
        signing.Config().use_elliptic_key_signer(  # type: ignore[no-untyped-call]
            private_key=private_key,
            password=password,  # type: ignore[arg-type]  # cryptography wants bytes
        ).set_hashing_config(_hashing_config()).sign(folder, sig_path)
    except ValueError as exc:
        raise BundleError(f"cannot sign: {_clean(exc)}") from exc
    return sig_path


def _refuse_links(folder: Path) -> None:
    """Bundles hold regular files and folders only; name the first offender, relative."""
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"bundle folder holds a symlink: {rel} (bundles never do)")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise BundleError(f"bundle folder holds a special file: {rel}")


def hash_folder(folder: Path) -> dict[str, tuple[str, str]]:
    """``{relative path: (algorithm, hex digest)}`` of every signed file, hashed in parallel."""
    try:
        _refuse_links(folder)
        manifest = _hashing_config().hash(folder)
    except ValueError as exc:  # model-signing's own refusal (a file swapped meanwhile)
        raise BundleError(f"bundle folder holds a link or special file: {_clean(exc)}") from exc
    except OSError as exc:
        raise BundleError("bundle folder cannot be read") from exc
    return _digests(manifest)


def _digests(manifest: Any) -> dict[str, tuple[str, str]]:
    return {
        rd.identifier: (rd.digest.algorithm, rd.digest.digest_hex)
        for rd in manifest.resource_descriptors()
    }


def _clean(exc: BaseException) -> str:
    """The upstream message without absolute paths of this machine."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = text.split(". This behavior can be changed")[0]  # an option we do not offer
    return re.sub(r"/[^\s'\"]*/([^\s'\"/]+)", r"\1", text)[:200]


class _KeyVerifier(sign_ec_key.Verifier):
    """model-signing's EC verifier, built from a key object instead of a file."""

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        self._public_key = public_key


def _check_envelope(path: Path, public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """Verify one signature file's envelope; return the signed manifest's digests + params."""
    if path.stat().st_size > _MAX_SIG_BYTES:
        raise ValueError("signature file too large")
    signature = sign_sigstore_pb.Signature.read(path)
    manifest = _KeyVerifier(public_key).verify(signature)
    params = manifest.serialization_type
    if params.get("method") != "files" or params.get("hash_type") != "sha256":
        raise ValueError("signed with an unsupported hashing method (need files + sha256)")
    return {"digests": _digests(manifest)}


def verify_bundle(
    folder: Path,
    trusted: Mapping[str, ec.EllipticCurvePublicKey],
    threshold: int,
    *,
    revoked: frozenset[str] = frozenset(),
    other_roles: frozenset[str] = frozenset(),
) -> VerificationReport:
    """Check ``folder`` against ``trusted`` keys (key id -> key); never raises on bad content.

    ``other_roles``: ids the trust store holds for other roles (policy, credentials): such a
    signature is reported as ``not-a-bundle-key`` rather than ``unknown-key``.
    """
    checks: list[SignatureCheck] = []
    problems: list[str] = []
    expected: list[tuple[str, dict[str, tuple[str, str]]]] = []
    sig_dir = folder / SIGNATURES_DIR
    entries = sorted(sig_dir.iterdir()) if sig_dir.is_dir() else []
    if len(entries) > _MAX_SIGNATURES:
        problems.append(f"more than {_MAX_SIGNATURES} entries in {SIGNATURES_DIR}/")
        entries = entries[:_MAX_SIGNATURES]
    for entry in entries:
        match = _SIG_NAME.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_file():
            problems.append(f"unexpected entry {SIGNATURES_DIR}/{entry.name[:80]}")
            continue
        kid = match.group(1)
        if kid in revoked:
            checks.append(SignatureCheck(kid, "revoked"))
            continue
        key = trusted.get(kid)
        if key is None:
            status: Status = "not-a-bundle-key" if kid in other_roles else "unknown-key"
            checks.append(SignatureCheck(kid, status))
            continue
        try:
            expected.append((kid, _check_envelope(entry, key)["digests"]))
        except Exception as exc:  # any parse or crypto failure is a bad signature, not a crash
            checks.append(SignatureCheck(kid, "bad-signature", _clean(exc)))
    missing: set[str] = set()
    extra: set[str] = set()
    changed: set[str] = set()
    if expected:
        actual = hash_folder(folder)
        for kid, digests in expected:
            if digests == actual:
                checks.append(SignatureCheck(kid, "valid"))
                continue
            checks.append(SignatureCheck(kid, "content-mismatch"))
            missing |= set(digests) - set(actual)
            extra |= set(actual) - set(digests)
            changed |= {p for p in set(digests) & set(actual) if digests[p] != actual[p]}
    if not (folder / BUNDLE_JSON).is_file():
        problems.append(f"{BUNDLE_JSON} is missing")
    checks.sort(key=lambda c: c.key_id)
    return VerificationReport(
        threshold=threshold,
        signatures=tuple(checks),
        missing_files=tuple(sorted(missing)),
        extra_files=tuple(sorted(extra)),
        changed_files=tuple(sorted(changed)),
        problems=tuple(problems),
    )


def require_verified(report: VerificationReport) -> None:
    if not report.ok:
        raise SignatureError(report.summary())
