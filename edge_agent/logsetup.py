"""Logging for the daemon: plain lines for journald, or JSON lines when configured."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from edge_agent.config import LoggingConfig

__all__ = ["handle_loop_exception", "setup_logging"]

_log = logging.getLogger(__name__)
_GRPC_CORE_LOGGER = "grpc._cython.cygrpc"


def _is_client_gone_write(exc: BaseException | None) -> bool:
    # grpcio's ExecuteBatchError: a batch (here, sending a response) failed in core because
    # the call had ended, i.e. the client cancelled or dropped while we wrote (grpc#31570).
    kind = type(exc)
    return kind.__name__ == "ExecuteBatchError" and kind.__module__.startswith("grpc")


class _DemoteClientGoneWrites(logging.Filter):
    """grpcio logs such a write at ERROR with a traceback although the call is already over
    for the client and the server carries on; at ERROR it would page an operator for nothing.
    Demoted to DEBUG, where it still shows when someone looks for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and _is_client_gone_write(exc):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def handle_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The daemon loop's exception handler: the same client-gone writes, surfacing as
    "Task exception was never retrieved", go to DEBUG; everything else as asyncio reports it."""
    if _is_client_gone_write(context.get("exception")):
        _log.debug("a response write failed after the client left: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.json:
        handler.setFormatter(_JsonFormatter())
    else:
        # journald adds its own timestamps; the level and logger are what matter.
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    core = logging.getLogger(_GRPC_CORE_LOGGER)
    for old in [f for f in core.filters if isinstance(f, _DemoteClientGoneWrites)]:
        core.removeFilter(old)
    core.addFilter(_DemoteClientGoneWrites())
