"""The tamper-evident, hash-chained audit log of routing decisions and bundle events."""

from edge_agent.audit._bundle import BUNDLE_DESTINATION, BUNDLE_EVENTS, bundle_entry
from edge_agent.audit._cli import add_audit_commands
from edge_agent.audit._config import AuditConfig, parse_audit_config
from edge_agent.audit._log import (
    GENESIS_HASH,
    AuditAttempt,
    AuditEntry,
    AuditLog,
    AuditRecord,
    VerifyResult,
    record_hash,
)

__all__ = [
    "BUNDLE_DESTINATION",
    "BUNDLE_EVENTS",
    "GENESIS_HASH",
    "AuditAttempt",
    "AuditConfig",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "VerifyResult",
    "add_audit_commands",
    "bundle_entry",
    "parse_audit_config",
    "record_hash",
]
