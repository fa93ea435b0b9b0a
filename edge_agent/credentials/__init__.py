"""Device identity and fleet-sealed cloud credentials (the HF token envelope).

The box owns an X25519 key (:class:`DeviceIdentity`); the operator seals a token to it
(:func:`seal_credential`), signed by a fleet key; :class:`CredentialStore` opens it and is
the only holder of the token, handed to the cloud client through
:meth:`CredentialStore.token_provider` as a masked :class:`SecretToken`.
"""

from edge_agent.credentials._cli import add_credentials_commands, add_device_key_command
from edge_agent.credentials._config import (
    DEFAULT_STATE_DIR,
    CredentialsConfig,
    parse_credentials_config,
)
from edge_agent.credentials._device import DeviceIdentity, device_id_for, load_device_public_key
from edge_agent.credentials._envelope import (
    CREDENTIAL_KIND,
    CredentialScope,
    EnvelopeInfo,
    OpenedCredential,
    inspect_envelope,
    open_envelope,
    seal_credential,
)
from edge_agent.credentials._secret import SecretToken
from edge_agent.credentials._store import CredentialStore, systemd_credential_path

__all__ = [
    "CREDENTIAL_KIND",
    "DEFAULT_STATE_DIR",
    "CredentialScope",
    "CredentialStore",
    "CredentialsConfig",
    "DeviceIdentity",
    "EnvelopeInfo",
    "OpenedCredential",
    "SecretToken",
    "add_credentials_commands",
    "add_device_key_command",
    "device_id_for",
    "inspect_envelope",
    "load_device_public_key",
    "open_envelope",
    "parse_credentials_config",
    "seal_credential",
    "systemd_credential_path",
]
