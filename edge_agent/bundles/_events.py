"""Every bundle event goes to the daemon log and, when the daemon has one, the audit log."""

from __future__ import annotations

import logging

from edge_agent.audit import AuditLog, bundle_entry

__all__ = ["BundleEvents"]

_log = logging.getLogger("edge_agent.bundles")

_WARN = frozenset({"refused", "inbox_rejected", "dropped", "fallback"})


class BundleEvents:
    def __init__(self, audit: AuditLog | None = None) -> None:
        self._audit = audit

    def _log_line(self, event: str, reason: str, source: str, bundle: str, release: int) -> None:
        what = f"{bundle} release {release}" if bundle else "-"
        level = logging.WARNING if event in _WARN else logging.INFO
        _log.log(level, "bundle %s (%s, from %s): %s", event, what, source, reason)

    async def record(
        self, event: str, reason: str, *, source: str, bundle: str = "", release: int = 0
    ) -> None:
        self._log_line(event, reason, source, bundle, release)
        if self._audit is None:
            return
        entry = bundle_entry(event, reason, source=source, bundle=bundle, release=release)
        try:
            await self._audit.append_async(entry)
        except Exception:  # the audit disk failing must not turn a refusal into a crash
            _log.exception("bundle event could not be written to the audit log")

    def record_sync(
        self, event: str, reason: str, *, source: str, bundle: str = "", release: int = 0
    ) -> None:
        """For start-up code running in a thread (no event loop)."""
        self._log_line(event, reason, source, bundle, release)
        if self._audit is None:
            return
        entry = bundle_entry(event, reason, source=source, bundle=bundle, release=release)
        try:
            self._audit.append(entry)
        except Exception:
            _log.exception("bundle event could not be written to the audit log")
