"""Where the box finds its sealed envelope, and the only holder of the opened token."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edge_agent._fleetkeys import FleetKeyring
from edge_agent._statefiles import atomic_write_bytes
from edge_agent.credentials._config import CredentialsConfig
from edge_agent.credentials._device import DeviceIdentity
from edge_agent.credentials._envelope import (
    CredentialScope,
    EnvelopeInfo,
    OpenedCredential,
    open_envelope,
)
from edge_agent.credentials._secret import SecretToken
from edge_agent.errors import CredentialError

__all__ = ["CredentialStore", "systemd_credential_path"]

_log = logging.getLogger(__name__)


def systemd_credential_path(name: str) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/<name>`` when systemd passed one (read at call time)."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    path = Path(folder) / name
    return path if path.is_file() else None


class CredentialStore:
    """Opens envelopes for this device and hands the token to the cloud client only."""

    def __init__(
        self,
        config: CredentialsConfig,
        identity: DeviceIdentity,
        keyring: FleetKeyring,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._identity = identity
        self._keyring = keyring
        self._clock = clock
        self._lock = threading.Lock()
        self._current: OpenedCredential | None = None

    @classmethod
    def from_config(cls, config: CredentialsConfig) -> CredentialStore:
        return cls(
            config,
            DeviceIdentity.load_or_create(config.device_key),
            FleetKeyring.from_paths(config.trusted_keys),
        )

    @property
    def identity(self) -> DeviceIdentity:
        return self._identity

    def load(self) -> EnvelopeInfo | None:
        """Open the envelope from systemd's credential or the state dir (newest valid wins).

        Each refused source is logged with its reason and skipped; the method raises only
        when a source existed and none could be opened, so the caller can report it.
        """
        now = self._clock()
        sources = [
            p
            for p in (
                systemd_credential_path(self._config.systemd_credential),
                self._config.envelope_path,
            )
            if p is not None and p.is_file()
        ]
        opened: list[OpenedCredential] = []
        last_error: CredentialError | None = None
        for path in sources:
            try:
                opened.append(
                    open_envelope(path.read_bytes(), self._identity, self._keyring, now=now)
                )
            except CredentialError as exc:
                _log.warning("credential source %s refused: %s", path.name, exc.message)
                last_error = exc
            except OSError as exc:
                _log.warning("credential source %s unreadable: %s", path.name, exc.strerror)
        if not opened:
            with self._lock:
                self._current = None
            if last_error is not None:
                raise last_error
            return None
        best = max(opened, key=lambda c: c.info.issued_at)
        with self._lock:
            self._current = best
        return best.info

    def install(self, blob: bytes) -> EnvelopeInfo:
        """Check a pushed envelope opens on this box, then keep it (atomically) and use it."""
        opened = open_envelope(blob, self._identity, self._keyring, now=self._clock())
        with self._lock:
            current = self._current
        # Anti-rollback: an older envelope (perhaps one with a wider scope that the fleet
        # since narrowed) must not replace the one in force.
        if current is not None and opened.info.issued_at < current.info.issued_at:
            raise CredentialError(
                "this envelope was issued before the one in force; seal a new one instead"
            )
        atomic_write_bytes(self._config.envelope_path, blob, mode=0o600)
        with self._lock:
            self._current = opened
        _log.info(
            "credential envelope %s installed (expires %s, signer %s)",
            opened.info.envelope_id[:12],
            opened.info.expires_at.isoformat(),
            opened.info.signer_key_id[:16],
        )
        return opened.info

    def _valid(self) -> OpenedCredential | None:
        with self._lock:
            current = self._current
        if current is None or current.expired(self._clock()):
            return None
        return current

    def info(self) -> EnvelopeInfo | None:
        """Metadata of the usable credential (status pages); None when none or expired."""
        current = self._valid()
        return None if current is None else current.info

    def scope(self) -> CredentialScope | None:
        """What the credential permits, for :func:`edge_agent.policy.merge_policy`."""
        current = self._valid()
        return None if current is None else current.info.scope

    def secret_provider(self) -> Callable[[], SecretToken]:
        """A callable returning the masked token; raises :class:`CredentialError` when none.

        It is asked at each request, so a token is never used past its expiry even in a
        long-running daemon.
        """

        def provide() -> SecretToken:
            current = self._valid()
            if current is None:
                raise CredentialError("no valid cloud credential is installed")
            return current.token

        return provide

    def token_provider(self) -> Callable[[], str | None]:
        """The ``edge_agent.cloud.TokenProvider`` for the router client.

        Returns the bare token only at the moment the client builds its Authorization
        header, and None while no unexpired credential is installed.
        """

        def provide() -> str | None:
            current = self._valid()
            return None if current is None else current.token.reveal()

        return provide
