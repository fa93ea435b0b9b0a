"""Make an N-layer copy of Mistral Small 3 (exact config, Tekken tokenizer) for benchmarks.

Runs offline in the build venv (``pip install -e '.[build]'``):

    .venv-build/bin/python scripts/make_real_shape_model.py --layers 2 --out .cache/ms3-2l
    .venv-build/bin/python scripts/make_real_shape_model.py --layers 2 --out X --dry-run

``models/mistral-small-3/config.json`` with only ``num_hidden_layers`` changed (head_dim 128,
hidden 5120, 32768-wide MLP, 131072 vocabulary, untied), seeded random bf16 weights, and
mistral-common's Tekken file as the only tokenizer, exported by the operator's command
``edge-agent bundle build --from-hf`` (scripts/v7_checkpoint.py) into an unsigned lab bundle
folder that benchmarks load as a model folder. The output is noise; per-token cost, memory and
the format are what it is for. Never commit it.

Memory: the builder peaks at ~6.2 bytes per parameter (2 layers: 2.45B parameters, ~15 GB),
plus the checkpoint itself; the command refuses a machine with too little (pick fewer layers).
``--dry-run`` writes only config.json and tekken.json and prints the command's plan.
``--checkpoint-only`` writes the seeded Hugging Face checkpoint to ``--out`` and stops: the same
seed gives the same weights as the bundle, for other runtimes to convert (BENCHMARKS' llama.cpp
rows: scripts/bench_real_shape.py ``--gguf``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from v7_checkpoint import (
    bundle_build_command,
    make_checkpoint,
    parameter_count,
    real_config,
    run,
    write_checkpoint_files,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, required=True, help="num_hidden_layers (40 real)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder (new)")
    parser.add_argument("--context", type=int, default=8192, help="tokens per request")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--dry-run", action="store_true", help="print the plan, make nothing")
    parser.add_argument(
        "--checkpoint-only", action="store_true", help="write the HF checkpoint to --out, no export"
    )
    args = parser.parse_args(argv)
    if args.layers < 1:
        parser.error("--layers must be positive")
    config = real_config(args.layers)
    name = f"ms3-{args.layers}l-random"
    print(f"{name}: {parameter_count(config):,} parameters, seed {args.seed}")
    started = time.monotonic()
    if args.checkpoint_only:
        make_checkpoint(config, args.out, args.seed)
        print(f"checkpoint in {time.monotonic() - started:.0f} s: {args.out}")
        return
    with tempfile.TemporaryDirectory(prefix="make-real-shape-") as tmp_s:
        hf_dir = Path(tmp_s) / "hf"
        if args.dry_run:
            write_checkpoint_files(config, hf_dir)
        else:
            make_checkpoint(config, hf_dir, args.seed)
        run(bundle_build_command(hf_dir, args.out, name, args.context, dry_run=args.dry_run))
    if not args.dry_run:
        print(f"done in {time.monotonic() - started:.0f} s: {args.out}")


if __name__ == "__main__":
    main()
