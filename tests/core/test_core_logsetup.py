"""Log set-up: a client leaving mid-write is not an ERROR; everything else still is."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from grpc._cython import cygrpc  # type: ignore[attr-defined]

from edge_agent.config import LoggingConfig
from edge_agent.logsetup import handle_loop_exception, setup_logging

_CORE = logging.getLogger("grpc._cython.cygrpc")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, filters = root.handlers[:], root.level, _CORE.filters[:]
    yield
    root.handlers[:], _CORE.filters[:] = handlers, filters
    root.setLevel(level)


def _client_gone_write() -> None:
    # What grpcio's aio server logs when a response write fails because the call ended.
    try:
        raise cygrpc.ExecuteBatchError('Failed "execute_batch": (SendMessageOperation,)')
    except cygrpc.ExecuteBatchError:
        _CORE.exception("ExecuteBatchError raised in core by servicer method [%s]", "/x/Chat")


@pytest.mark.usefixtures("restored_logging")
def test_a_write_after_the_client_left_is_debug_not_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging(LoggingConfig(level="INFO"))
    _client_gone_write()
    _CORE.error("some other core failure")
    err = capsys.readouterr().err
    assert "ExecuteBatchError" not in err
    assert "ERROR grpc._cython.cygrpc: some other core failure" in err

    setup_logging(LoggingConfig(level="DEBUG"))  # idempotent: one filter, still demoting
    _client_gone_write()
    err = capsys.readouterr().err
    assert "DEBUG grpc._cython.cygrpc: ExecuteBatchError raised in core" in err
    assert "ERROR" not in err


def test_the_loop_handler_demotes_only_the_client_gone_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            gone = cygrpc.ExecuteBatchError("Failed execute_batch")
            handle_loop_exception(loop, {"message": "Task exception", "exception": gone})
            other = KeyError(1)
            handle_loop_exception(loop, {"message": "Task exception", "exception": other})
    finally:
        loop.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].exc_info[1] is other
    assert any(
        r.levelno == logging.DEBUG and "after the client left" in r.getMessage()
        for r in caplog.records
    )
