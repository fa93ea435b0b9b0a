"""Bundle verification throughput vs. parallel sha256 of the same files on all cores.

    .venv/bin/python scripts/bench_bundles.py --size-gb 2 --files 8 --rounds 3

Builds a synthetic signed bundle in a temp dir, warms the page cache, then interleaves
rounds of (a) ``verify_bundle`` (signature envelope + model-signing manifest of every file)
and (b) the baseline: sha256 of every file, one file per worker, all cores -- both as Python
threads and as parallel ``sha256sum`` processes; the faster baseline is the reference.
Prints a table and writes it to docs/BENCHMARKS.md under "## Bundles".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_report import replace_section  # noqa: E402

from edge_agent.bundles import (  # noqa: E402
    generate_keypair,
    load_public_key,
    sign_bundle,
    verify_bundle,
)

_BLOCK = 64 * 1024 * 1024


def make_bundle(root: Path, total: int, files: int) -> Path:
    folder = root / "bundle"
    folder.mkdir()
    block = os.urandom(_BLOCK)  # hashing cost does not depend on content; writing does
    per_file = total // files
    for i in range(files):
        name = "model.onnx.data" if i == 0 else f"model.onnx.data.{i}"
        with (folder / name).open("wb") as f:
            left = per_file
            while left:
                n = min(left, _BLOCK)
                f.write(block[:n])
                left -= n
    doc = {
        "format": 1,
        "name": "bench",
        "version": "1",
        "release": 1,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_at": None,
        "min_agent_version": "0.1.0",
        "model": {
            "architecture": "MistralForCausalLM",
            "quantization": "int4",
            "execution_providers": ["cpu"],
            **dict.fromkeys(
                [
                    "context_length",
                    "num_layers",
                    "num_kv_heads",
                    "head_size",
                    "hidden_size",
                    "vocab_size",
                    "kv_bytes_per_token",
                    "weights_bytes",
                    "memory_estimate_bytes",
                ],
                1,
            ),
        },
    }
    (folder / "bundle.json").write_text(json.dumps(doc))
    return folder


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


def baseline_threads(paths: list[Path]) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_sha, paths))
    return time.perf_counter() - t


def baseline_sha256sum(paths: list[Path]) -> float:
    t = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []
    pending = list(paths)
    while pending or procs:
        while pending and len(procs) < (os.cpu_count() or 1):
            procs.append(
                subprocess.Popen(["sha256sum", str(pending.pop())], stdout=subprocess.DEVNULL)
            )
        procs[0].wait()
        procs = [p for p in procs if p.poll() is None]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/BENCHMARKS.md")
    args = ap.parse_args()
    total = int(args.size_gb * 1024**3)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-bundles-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        folder = make_bundle(root, total, args.files)
        kp = generate_keypair(root / "keys", "bench")
        sign_bundle(folder, kp.private_key_path)
        print(f"built and signed {total / 1e9:.2f} GB in {time.perf_counter() - t:.1f} s")
        keys = {kp.key_id: load_public_key(kp.public_key_path.read_bytes())}
        paths = sorted(p for p in folder.iterdir() if p.is_file())
        baseline_threads(paths)  # warm the page cache: we measure hashing, not the disk
        best = {"verify": 1e9, "threads": 1e9, "sha256sum": 1e9}
        for _ in range(args.rounds):
            t = time.perf_counter()
            report = verify_bundle(folder, keys, 1)
            best["verify"] = min(best["verify"], time.perf_counter() - t)
            assert report.ok, report.summary()
            best["threads"] = min(best["threads"], baseline_threads(paths))
            best["sha256sum"] = min(best["sha256sum"], baseline_sha256sum(paths))
    gbps = {k: total / v / 1e9 for k, v in best.items()}
    reference = max(gbps["threads"], gbps["sha256sum"])
    ratio = gbps["verify"] / reference
    rows = [
        ("verify_bundle (signature + manifest)", "verify"),
        ("sha256, Python threads, all cores", "threads"),
        ("sha256sum processes, all cores", "sha256sum"),
    ]
    table = ["| what | best of rounds | GB/s | vs. fastest baseline |", "|---|---:|---:|---:|"]
    for label, key in rows:
        table.append(
            f"| {label} | {best[key]:.2f} s | {gbps[key]:.2f} | {gbps[key] / reference:.2f}× |"
        )
    head = (
        f"`scripts/bench_bundles.py --size-gb {args.size_gb:g} --files {args.files} "
        f"--rounds {args.rounds}` on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}; page cache warm "
        "(hashing, not disk, is measured); the box was shared with other work."
    )
    verdict = (
        f"Verification throughput ÷ parallel sha256: **{ratio:.2f}** (target ≥ 0.9). Both "
        "sides hash one file per worker: weights in a single `model.onnx.data` hash on one "
        "core either way (run with `--files 1` to see it)."
    )
    text = "\n".join([head, "", *table, "", verdict])
    print(text)
    if not args.no_write:
        replace_section(f"## Bundles\n\n{text}\n")


if __name__ == "__main__":
    main()
