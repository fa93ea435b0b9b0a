"""Air-gap import: poll a folder (a USB stick's mount or a copy target) for ``*.tar`` bundles.

A file is taken only once its size and mtime held still for one poll interval (a copy in
progress must not be installed half-way). It then goes through exactly the path of a pushed
upload (``BundleManager.install_archive``) and is moved to ``done/`` or to ``rejected/``
with a ``<name>.reason.txt`` beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from edge_agent.bundles._manager import BundleManager
from edge_agent.errors import EdgeAgentError

__all__ = ["InboxWatcher"]

_log = logging.getLogger(__name__)


class InboxWatcher:
    def __init__(self, manager: BundleManager, inbox: Path, *, poll_seconds: float) -> None:
        self._manager = manager
        self.inbox = inbox
        self.done = inbox / "done"
        self.rejected = inbox / "rejected"
        self._poll = poll_seconds
        self._last_seen: dict[str, tuple[int, int]] = {}

    async def run(self) -> None:
        """Poll until cancelled; one failing scan never stops the watcher."""
        while True:
            try:
                await self.scan_once()
            except Exception:
                _log.exception("inbox scan failed")
            await asyncio.sleep(self._poll)

    async def scan_once(self) -> list[tuple[str, str]]:
        """Process every settled ``*.tar``; returns ``(file name, outcome or reason)``."""
        for d in (self.inbox, self.done, self.rejected):
            d.mkdir(parents=True, exist_ok=True)
        results: list[tuple[str, str]] = []
        current: dict[str, tuple[int, int]] = {}
        for path in sorted(self.inbox.glob("*.tar")):
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if path.is_symlink() or not path.is_file():
                self._move(path, self.rejected, "not a regular file")
                results.append((path.name, "not a regular file"))
                continue
            sig = (st.st_size, st.st_mtime_ns)
            current[path.name] = sig
            if self._last_seen.get(path.name) != sig:
                continue  # still being copied, or first sight: wait one interval
            del current[path.name]
            results.append((path.name, await self._process(path)))
        self._last_seen = current
        return results

    async def _process(self, path: Path) -> str:
        _log.info("inbox: installing %s", path.name)
        try:
            result = await self._manager.install_archive(path)
        except EdgeAgentError as exc:
            _log.warning("inbox: %s rejected: %s", path.name, exc.message)
            self._move(path, self.rejected, exc.message)
            return exc.message
        except Exception:
            _log.exception("inbox: %s failed", path.name)
            self._move(path, self.rejected, "internal error (see the daemon log)")
            return "internal error"
        self._move(path, self.done, None)
        return result.outcome

    def _move(self, path: Path, folder: Path, reason: str | None) -> None:
        target = folder / path.name
        if target.exists():
            target = folder / f"{path.stem}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.tar"
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
        if reason is not None:
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
