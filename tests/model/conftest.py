"""tests/model runs the daemon harness of tests/daemon on the format fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

_DAEMON = Path(__file__).resolve().parent.parent / "daemon"
if str(_DAEMON) not in sys.path:
    sys.path.insert(0, str(_DAEMON))
