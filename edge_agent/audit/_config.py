"""The ``[audit]`` config section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent._tomlreader import TableReader

__all__ = ["AuditConfig", "parse_audit_config"]

_DEFAULT_STATE = Path("/var/lib/edge-agent")


@dataclass(frozen=True, slots=True)
class AuditConfig:
    path: Path = _DEFAULT_STATE / "audit" / "audit.sqlite3"
    # Prompt text is personal data more often than not: off unless the site decides otherwise.
    include_prompts: bool = False

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> AuditConfig:
        return cls(path=state_dir / "audit" / "audit.sqlite3")


def parse_audit_config(
    reader: TableReader, *, state_dir: Path = _DEFAULT_STATE, base: Path | None = None
) -> AuditConfig:
    defaults = AuditConfig.for_state_dir(state_dir)
    config = AuditConfig(
        path=reader.path("path", defaults.path, base=base),
        include_prompts=reader.boolean("include_prompts", False),
    )
    reader.finish()
    return config
