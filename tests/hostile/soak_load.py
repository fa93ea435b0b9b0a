"""The soak's 64 clients in a process of their own, so the daemon's process only serves
(client coroutines beside the daemon's loop would compete with it for the GIL).

Usage: ``soak_load.py TARGET SECONDS SEED``; prints the clients' tally as one JSON line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_common import Tally
from hostile_soak import load_clients


def main() -> None:
    target, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    tally = Tally("soak load")
    tally.figures["mix"] = load_clients(target, seconds, tally, seed)
    print(json.dumps(asdict(tally)), flush=True)


if __name__ == "__main__":
    main()
