"""llama.cpp on a GGUF of the same weights: the reference scripts/bench_real_shape.py names.

Not a dependency of the project: ``pip install llama-cpp-python`` into the bench's venv (built
for this CPU, e.g. ``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON
-DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON"``; AMX off, it faults on
this VM). The GGUF: the same seeded checkpoint (``scripts/make_real_shape_model.py
--checkpoint-only``) converted by llama.cpp's ``convert_hf_to_gguf.py`` and quantised with
``python scripts/bench_llama_cpp.py --quantize F16.gguf Q4_0.gguf --type q4_0``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# llama_ftype values of llama.h: the quantisations the benchmark compares.
FTYPES = {"q4_0": 2, "q4_k_m": 15, "q8_0": 7}


class LlamaCpp:
    """One llama.cpp context, used as bench_real_shape's ``Raw`` is: same ids, same threads."""

    def __init__(self, gguf: Path, threads: int, context: int) -> None:
        from llama_cpp import Llama

        self.path = gguf
        # Default batch sizes of llama.cpp's own tools (n_batch 2048, n_ubatch 512); logits
        # only for each batch's last position, as llama.cpp's server computes them.
        self.llm = Llama(
            model_path=str(gguf),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=context,
            n_batch=min(2048, context),
            n_ubatch=512,
            logits_all=False,
            verbose=False,
        )

    def run(self, ids: np.ndarray[Any, np.dtype[np.int32]], tokens: int) -> tuple[float, float]:
        """Seconds to the first token (greedy), and decode tok/s after it."""
        llm = self.llm
        llm.reset()  # the next eval removes the KV past position 0
        start = time.perf_counter()
        llm.eval([int(t) for t in ids])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        stamps = [time.perf_counter()]
        for _ in range(tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            stamps.append(time.perf_counter())
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
        return stamps[0] - start, rate


def quantize(source: Path, target: Path, kind: str, threads: int) -> None:
    """llama.cpp's own quantiser (llama-quantize) through the library's C API."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0:
        raise SystemExit(f"llama_model_quantize failed ({code})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quantize", nargs=2, type=Path, metavar=("SOURCE", "TARGET"))
    parser.add_argument("--type", choices=sorted(FTYPES), default="q4_0")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.quantize:
        parser.error("nothing to do: --quantize SOURCE TARGET")
    source, target = args.quantize
    quantize(source, target, args.type, args.threads)
    print(f"{target}: {target.stat().st_size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
