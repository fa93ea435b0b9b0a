"""Signing, verifying and keeping the last good signed policy on the box."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent._fleetkeys import FleetKeyring, sign_document, verify_document
from edge_agent._statefiles import atomic_write_bytes
from edge_agent.errors import PolicyError
from edge_agent.policy._document import PolicyDocument, parse_policy

__all__ = ["POLICY_KIND", "PolicyStore", "sign_policy", "verify_policy"]

POLICY_KIND = "policy"
_log = logging.getLogger(__name__)


def sign_policy(text: str, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """Validate a policy TOML text and wrap it in a fleet signature (`policy sign`)."""
    parse_policy(text)  # never sign something the box would refuse
    return sign_document(POLICY_KIND, text.encode(), private_key)


def verify_policy(blob: bytes, keyring: FleetKeyring) -> PolicyDocument:
    doc = verify_document(blob, POLICY_KIND, keyring, error=PolicyError, what="policy")
    try:
        text = doc.payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError("policy is not UTF-8 text") from exc
    return parse_policy(text, signer_key_id=doc.key_id)


class PolicyStore:
    """Holds the current signed policy; a refused push leaves the last good one in force."""

    def __init__(self, path: Path, keyring: FleetKeyring) -> None:
        self._path = path
        self._keyring = keyring
        self._lock = threading.Lock()
        self._current: PolicyDocument | None = None

    def load(self) -> PolicyDocument | None:
        """Load the persisted policy at start; a bad file is reported and ignored."""
        try:
            blob = self._path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PolicyError(f"the stored policy cannot be read ({exc.strerror})") from exc
        doc = verify_policy(blob, self._keyring)
        with self._lock:
            self._current = doc
        return doc

    def current(self) -> PolicyDocument | None:
        with self._lock:
            return self._current

    def install(self, blob: bytes) -> PolicyDocument:
        """Verify a pushed policy, refuse rollback, persist it atomically, then use it."""
        doc = verify_policy(blob, self._keyring)
        with self._lock:
            current = self._current
            if current is not None:
                if doc.version < current.version:
                    raise PolicyError(
                        f"policy version {doc.version} is older than the installed "
                        f"version {current.version}"
                    )
                if doc.version == current.version and doc.text != current.text:
                    raise PolicyError(
                        f"policy version {doc.version} is installed with different content; "
                        "raise the version"
                    )
            atomic_write_bytes(self._path, blob, mode=0o600)
            self._current = doc
        _log.info("policy version %d installed (signer %s)", doc.version, doc.signer_key_id[:16])
        return doc
