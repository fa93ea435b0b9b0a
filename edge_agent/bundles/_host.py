"""What the bundle manager needs from the engine; the engine supervisor implements it."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

__all__ = ["ModelHost"]


class ModelHost(Protocol):
    async def trial_load(self, model_dir: Path) -> None:
        """Load in a fresh worker and smoke-generate a few tokens; raise EdgeAgentError."""

    async def switch_to(self, model_dir: Path) -> None:
        """New requests go to this model; in-flight streams finish on the old one."""

    async def health_probe(self) -> None:
        """A short generation on the active model; raise on failure."""
