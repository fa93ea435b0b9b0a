"""The soak's 64 clients in a process of their own, so the daemon's process only serves
(client coroutines beside the daemon's loop would compete with it for the GIL), run at a
lower CPU priority than the daemon (see LOAD_NICE).

Usage: ``soak_load.py TARGET SECONDS SEED``; prints the clients' tally as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_common import Tally
from hostile_soak import load_clients

LOAD_NICE = 10


def main() -> None:
    target, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    # The clients stand in for machines on the LAN: on this rig they share the box's cores,
    # and at the daemon's own priority they would take CPU from it that no real client
    # would (a third of a core here). So they run below the daemon and its engine worker.
    os.nice(LOAD_NICE)
    tally = Tally("soak load")
    tally.figures["mix"] = load_clients(target, seconds, tally, seed)
    print(json.dumps(asdict(tally)), flush=True)


if __name__ == "__main__":
    main()
