"""Bundle events as audit records, in the same hash chain as the routing decisions.

A bundle record is an ordinary :class:`AuditEntry` whose ``destination`` is ``"bundle"``;
``data_class`` holds the event, ``reason`` the detail (the refusal, the slot), ``client_id``
who caused it (the operator's client id, ``inbox``, ``daemon``), ``model`` the bundle's
name and version and ``provider`` its release. No column is added, so records written
before and after read the same way and ``audit list/verify/export`` show them as they are.
"""

from __future__ import annotations

import uuid

from edge_agent.audit._log import AuditEntry

__all__ = ["BUNDLE_DESTINATION", "BUNDLE_EVENTS", "bundle_entry"]

BUNDLE_DESTINATION = "bundle"
BUNDLE_EVENTS = frozenset(
    {
        "received",  # an archive arrived (push completed, inbox file taken)
        "refused",  # an install or rollback was refused; reason says which check and why
        "activated",  # a new bundle serves
        "installed",  # a new bundle waits in the rollback slot (push --no-activate)
        "rolled_back",  # the previous bundle serves again
        "inbox_rejected",  # an inbox file refused before it reached the installer
        "dropped",  # an installed bundle failed verification at start-up and was removed
        "fallback",  # no signed bundle left: the box serves the built-in model
    }
)


def bundle_entry(
    event: str, reason: str, *, source: str, bundle: str = "", release: int = 0
) -> AuditEntry:
    if event not in BUNDLE_EVENTS:
        raise ValueError(f"unknown bundle event {event!r}")
    return AuditEntry(
        request_id=f"bundle-{uuid.uuid4().hex}",
        client_id=source,
        data_class=event,
        destination=BUNDLE_DESTINATION,
        reason=reason,
        model=bundle,
        provider=f"release {release}" if release else "",
    )
