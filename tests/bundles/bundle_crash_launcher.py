"""A tiny fork server for the crash test: imports everything once, then forks one installer
child per request so a child starts in about a millisecond.

Protocol (line based): the test writes ``STATE ARCHIVE 0|1``; we answer ``pid N`` as soon as
the child runs, then ``exit S`` when it ends (S is the raw wait status; SIGKILL shows as 9).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_fixtures import run_installer


def main() -> None:
    for line in sys.stdin:
        state, archive, rollback = line.split()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run_installer(state, archive, rollback == "1")
            except BaseException:
                code = 1
            os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()
