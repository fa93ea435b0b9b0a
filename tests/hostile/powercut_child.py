"""Fork server for the power-cut suite: imports everything once, then forks writers on demand.

Protocol (lines on stdin): ``KIND STATE_DIR WRITERS``; for each writer we answer
``pid N`` at once. Each writer loops forever writing state of KIND and prints
``ack ...`` after a write returned (so it is durable by contract), until it is killed.
We answer ``exit`` once all of them ended. Kinds:

* ``policy``: install signed policies of rising versions (PolicyStore.install).
* ``credentials``: install freshly sealed envelopes (CredentialStore.install).
* ``audit``: append records to the hash-chained audit log (AuditLog.append).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent._fleetkeys import FleetKeyring
from edge_agent.audit import AuditEntry, AuditLog
from edge_agent.credentials import (
    CredentialsConfig,
    CredentialStore,
    DeviceIdentity,
    SecretToken,
    seal_credential,
)
from edge_agent.policy import PolicyStore, sign_policy

POLICY = """
version = {version}
default_data_class = "restricted"

[data_classes]
public = "local"
internal = "local"
confidential = "local"
restricted = "local"
"""


def _say(line: str) -> None:
    """One write(2) per line: a pipe write this small is atomic, so a writer killed while
    reporting leaves no half line for the launcher's next line to be glued to."""
    os.write(1, f"{line}\n".encode())


def _fleet_key(state: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((state / "fleet.key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def keyring(state: Path) -> FleetKeyring:
    return FleetKeyring.from_paths([state / "fleet.pub.pem"])


def policy_store(state: Path) -> PolicyStore:
    return PolicyStore(state / "policy" / "policy.signed", keyring(state))


def credential_store(state: Path) -> CredentialStore:
    config = CredentialsConfig.for_state_dir(state)
    return CredentialStore(config, DeviceIdentity.load_or_create(config.device_key), keyring(state))


def _policy_writer(state: Path) -> None:
    store, key = policy_store(state), _fleet_key(state)
    current = store.load()
    version = current.version if current else 0
    while True:
        version += 1
        store.install(sign_policy(POLICY.format(version=version), key))
        _say(f"ack {version}")


def _credential_writer(state: Path) -> None:
    store, key = credential_store(state), _fleet_key(state)
    store.load()
    while True:
        blob = seal_credential(
            SecretToken(f"hf_POWERCUTsentinel_{time.monotonic_ns()}"),
            device_public_key=store.identity.public_key,
            fleet_key=key,
            expires_at=datetime.now(UTC) + timedelta(days=1),
            allowed_models=["org/big-model"],
        )
        info = store.install(blob)
        _say(f"ack {info.envelope_id} {info.issued_at.isoformat()}")


def _audit_writer(state: Path) -> None:
    log = AuditLog(state / "audit" / "audit.sqlite3")
    n = 0
    while True:
        n += 1
        record = log.append(
            AuditEntry(
                request_id=f"pc-{os.getpid()}-{n}",
                client_id="powercut",
                data_class="internal",
                destination="local",
                reason="local.default",
                tokens_in=n,
                tokens_out=n,
                cost_usd=0.0,
                model="edge-demo-mistral",
                provider="cpu",
            )
        )
        _say(f"ack {record.seq} {record.hash}")


WRITERS = {"policy": _policy_writer, "credentials": _credential_writer, "audit": _audit_writer}


def main() -> None:
    for line in sys.stdin:
        kind, state, count = line.split()
        pids = []
        for _ in range(int(count)):
            pid = os.fork()
            if pid == 0:
                try:
                    WRITERS[kind](Path(state))
                finally:
                    os._exit(1)
            pids.append(pid)
            _say(f"pid {pid}")
        for pid in pids:
            os.waitpid(pid, 0)
        _say("exit")


if __name__ == "__main__":
    main()
