"""The TXT record of an edge-agent box: what a client needs before it connects.

Keys are short (DNS-SD advises ≤ 9 characters) and values plain text:
``api`` API version, ``model``/``mv`` active model and version, ``ep`` execution provider,
``pressure`` ok|elevated|critical, ``fp`` SHA-256 of the TLS certificate (hex, no colons),
``id`` device id, ``mtls`` port of the mTLS listener (absent when none), ``http`` or
``https`` port of the OpenAI-compatible HTTP API on the same addresses (absent when it is
not reachable there; ``https``: TLS with the certificate ``fp`` names).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["SERVICE_TYPE", "BoxAnnouncement"]

SERVICE_TYPE = "_edge-agent._tcp.local."
_MAX_VALUE = 200  # one TXT string is at most 255 bytes including "key="


def _clip(value: str) -> str:
    data = value.encode("utf-8")[:_MAX_VALUE]
    return data.decode("utf-8", errors="ignore")


def _port(text: str) -> int | None:
    # isascii: str.isdigit() also accepts "²", which int() refuses.
    ok = text.isascii() and text.isdigit() and 0 < int(text) < 65536
    return int(text) if ok else None


@dataclass(frozen=True, slots=True)
class BoxAnnouncement:
    """What the box publishes; the advertiser turns it into TXT properties."""

    fingerprint: str
    device_id: str
    model: str = ""
    model_version: str = ""
    execution_provider: str = ""
    pressure: str = "ok"
    mtls_port: int | None = None
    api: str = "v1"
    http_port: int | None = None
    http_tls: bool = False

    def properties(self) -> dict[str, str]:
        props = {
            "api": self.api,
            "model": self.model,
            "mv": self.model_version,
            "ep": self.execution_provider,
            "pressure": self.pressure,
            "fp": self.fingerprint,
            "id": self.device_id,
        }
        if self.mtls_port:
            props["mtls"] = str(self.mtls_port)
        if self.http_port:
            props["https" if self.http_tls else "http"] = str(self.http_port)
        return {k: _clip(v) for k, v in props.items()}

    @classmethod
    def from_properties(cls, props: Mapping[str, str]) -> BoxAnnouncement:
        """Parse a received TXT record (untrusted LAN input: every field is optional)."""
        https = _port(props.get("https", ""))
        return cls(
            fingerprint=props.get("fp", ""),
            device_id=props.get("id", ""),
            model=props.get("model", ""),
            model_version=props.get("mv", ""),
            execution_provider=props.get("ep", ""),
            pressure=props.get("pressure", ""),
            mtls_port=_port(props.get("mtls", "")),
            api=props.get("api", ""),
            # A box that somehow sent both: TLS wins, plaintext is never chosen over it.
            http_port=https or _port(props.get("http", "")),
            http_tls=https is not None,
        )
