"""Requests one after another: the worker resting at once against after ``engine.rest_delay_s``.

    .venv/bin/python scripts/bench_rest_delay.py --model .cache/ms3/ms3-2l --rounds 5 --write

Two real daemons on the model, one with ``rest_delay_s = 0`` (the worker gives back the
burst's memory the moment it is idle: batch Engines renewed, heap trimmed) and one with the
default delay; each round sends each daemon (alternately first) ``--requests`` prompts of
``--tokens`` tokens one after another, each with a head of its own (no prefix reuse), and
takes the prefill rate (prompt tokens ÷ time to the first token) of every request after the
first, the ones that follow another. Ratio = delayed ÷ at once within a round; medians and
ranges. ``--write`` puts the table in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_real_shape import Daemon, Raw, _text_of
from bench_report import replace_section

from edge_agent.config import EngineConfig

HEAD = "## Requests one after another: when the worker rests (scripts/bench_rest_delay.py)"


def _cell(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    args = parser.parse_args()
    delay = EngineConfig().rest_delay_s
    raw = Raw(args.model)  # the prompt builder, to size the prompts
    sides = {"at once": "rest_delay_s = 0\n", "delayed": f"rest_delay_s = {delay}\n"}
    rates: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        daemons: dict[str, Daemon] = {}
        for side, engine in sides.items():
            folder = Path(tmp) / side.replace(" ", "-")
            folder.mkdir()
            daemons[side] = Daemon(args.model, folder, engine)
        try:
            for daemon in daemons.values():
                daemon.chat([("user", "warm up")], 2)
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for side in order:
                    got = []
                    for i in range(args.requests):
                        text = _text_of(raw, args.tokens, f"Round {r} request {i} of {side}.")
                        seconds, _, prompt = daemons[side].chat([("user", text)], 1)
                        if i:
                            got.append(prompt / seconds)
                    rates[side].append(statistics.median(got))
                    time.sleep(delay + 1)  # both start the next round rested
                print(f"round {r + 1}: " + ", ".join(f"{s} {rates[s][-1]:.0f}" for s in sides))
        finally:
            for daemon in daemons.values():
                daemon.stop()
    ratio = [d / a for d, a in zip(rates["delayed"], rates["at once"], strict=True)]
    table = "\n".join(
        [
            HEAD,
            "",
            f"`python scripts/bench_rest_delay.py --model {args.model} --rounds {args.rounds} "
            f"--requests {args.requests} --tokens {args.tokens}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores. "
            f"Prefill tok/s of requests 2–{args.requests} of each burst (the median per round), "
            "two daemons alternating; medians (range) over the rounds.",
            "",
            f"| rest at once (`rest_delay_s = 0`) | rest after {delay:g} s (default) | "
            "**delayed ÷ at once** |",
            "|---|---|---|",
            f"| {_cell(rates['at once'], '.0f')} | {_cell(rates['delayed'], '.0f')} | "
            f"**{_cell(ratio, '.2f')}** |",
            "",
        ]
    )
    print(table)
    if args.write:
        replace_section(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
