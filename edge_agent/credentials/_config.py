"""The ``[credentials]`` config section."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge_agent._tomlreader import TableReader

__all__ = ["DEFAULT_STATE_DIR", "CredentialsConfig", "parse_credentials_config"]

DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
_CRED_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    # Fleet public keys allowed to sign credential envelopes (PEM files).
    trusted_keys: tuple[Path, ...] = ()
    # The box's own X25519 key, created at first start.
    device_key: Path = DEFAULT_STATE_DIR / "device" / "device_key.pem"
    # Where a pushed/installed envelope is kept.
    envelope_path: Path = DEFAULT_STATE_DIR / "credentials" / "envelope.sealed"
    # Name under $CREDENTIALS_DIRECTORY (systemd LoadCredential=/LoadCredentialEncrypted=).
    systemd_credential: str = "edge-agent-hf-token.sealed"

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> CredentialsConfig:
        return cls(
            device_key=state_dir / "device" / "device_key.pem",
            envelope_path=state_dir / "credentials" / "envelope.sealed",
        )


def parse_credentials_config(
    reader: TableReader, *, state_dir: Path = DEFAULT_STATE_DIR, base: Path | None = None
) -> CredentialsConfig:
    defaults = CredentialsConfig.for_state_dir(state_dir)
    keys = reader.string_list("trusted_keys", ())
    name = reader.string("systemd_credential", defaults.systemd_credential)
    if not _CRED_NAME.match(name):
        raise reader.error("systemd_credential", "must be a plain file name")
    config = CredentialsConfig(
        trusted_keys=tuple(
            (Path(k).expanduser() if Path(k).is_absolute() or base is None else base / k)
            for k in keys
        ),
        device_key=reader.path("device_key", defaults.device_key, base=base),
        envelope_path=reader.path("envelope_path", defaults.envelope_path, base=base),
        systemd_credential=name,
    )
    reader.finish()
    return config
