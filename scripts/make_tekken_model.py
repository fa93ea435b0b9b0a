"""Make a Mistral Small 3 format model: MistralForCausalLM, a Tekken tokenizer, the V7 template.

Runs offline in the build venv (torch, transformers, mistral-common, onnxruntime-genai's builder):

    .venv-build/bin/python scripts/make_tekken_model.py --shape tiny --out models/tiny-v7-tekken
    .venv-build/bin/python scripts/make_tekken_model.py --shape real --layers 2 --out .cache/ms3-2l

``tiny`` is the CI fixture: the format facts of Mistral Small 3 (131072-token Tekken vocabulary,
head_dim different from hidden/heads, grouped KV heads, untied embeddings, a ``search.max_length``
below ``context_length``) at a size that is committed (a few MB). ``real`` is the exact
``models/mistral-small-3/config.json`` with only ``num_hidden_layers`` changed, for benchmarks
(the builder needs ~6.2 bytes per parameter of RAM: ~15 GB for 2 layers).

Weights are seeded random: the output is noise; what this proves is the format (tokenizer, chat
encoding, shapes, context handling), never quality. The tokenizer is mistral-common's shipped
``tekken_240911.json`` converted with transformers' ``convert_tekken_tokenizer``; the chat template
is mistral-common's generated V7 template. For the tiny shape tokenizer.json is stored xz-compressed
(``tokenizer.json.xz``, 1.8 MB instead of 17 MB); ``tests/model/tekken_fixture.py`` unpacks it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from export_mistral import (
    OPTIONS,
    builder_command,
    check_output,
    patch_genai_config,
    run,
    stage_checkpoint,
)

ROOT = Path(__file__).resolve().parent.parent
REAL_CONFIG = ROOT / "models" / "mistral-small-3" / "config.json"
# Tiny, but every format fact of the real model kept: head_dim 16 != 32 / 4, GQA 4:2, untied.
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
TEKKEN_FILE = "tekken_240911.json"


def script_digest() -> str:
    """What the committed fixture records, so a changed script without a rebuild is noticed:
    this script and the recipe whose functions it runs."""
    here = Path(__file__).resolve().parent
    scripts = (here / "make_tekken_model.py", here / "export_mistral.py")
    return hashlib.sha256(b"".join(p.read_bytes() for p in scripts)).hexdigest()


def tekken_path() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / TEKKEN_FILE


def make_hf_model(config: dict[str, Any], hf_dir: Path, seed: int) -> int:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    keys = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
    cfg = MistralConfig(**keys)
    cfg.architectures = ["MistralForCausalLM"]
    # The real shape in bf16 as the checkpoint ships; the builder upcasts anyway.
    dtype = torch.float32 if config["hidden_size"] < 1024 else torch.bfloat16
    model = MistralForCausalLM(cfg).to(dtype)
    model.eval()
    model.save_pretrained(hf_dir, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def build(args: argparse.Namespace) -> None:
    real = json.loads(REAL_CONFIG.read_text())
    config = dict(real)
    if args.shape == "tiny":
        config.update(TINY)
    if args.layers is not None:
        config["num_hidden_layers"] = args.layers
    out: Path = args.out
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="make-tekken-") as tmp_s:
        tmp = Path(tmp_s)
        hf_dir, stage, onnx_dir = tmp / "hf", tmp / "stage", tmp / "onnx"
        layers = config["num_hidden_layers"]
        print(f"[1/4] model: MistralForCausalLM, seed {args.seed}, {layers} layers")
        params = make_hf_model(config, hf_dir, args.seed)
        print(f"  {params} parameters")
        # The checkpoint ships tekken.json only, as Mistral's own releases can: the recipe's
        # staging converts it and adds the V7 template (scripts/export_mistral.py).
        shutil.copyfile(tekken_path(), hf_dir / "tekken.json")
        print(f"[2/4] tokenizer: {TEKKEN_FILE} (mistral-common) -> tokenizer.json, V7 template")
        stage_checkpoint(hf_dir, stage)
        print("[3/4] export: onnxruntime-genai model builder, int4 CPU")
        cmd = builder_command(stage, onnx_dir, tmp / "cache", "cpu", OPTIONS["cpu"])
        print("  $ python " + " ".join(cmd[1:]))
        run(cmd)
        check_output(onnx_dir, hf_dir)
        # The fixture keeps the trained context_length above max_length: tests prove the
        # daemon serves the smaller.
        patch_genai_config(
            onnx_dir, args.max_length, args.max_batch_size, keep_trained_context=True
        )
        print(f"[4/4] into {out}")
        if args.shape == "tiny":
            raw = (onnx_dir / "tokenizer.json").read_bytes()
            (onnx_dir / "tokenizer.json.xz").write_bytes(lzma.compress(raw, preset=9))
            (onnx_dir / "tokenizer.json").unlink()
        (onnx_dir / "SOURCES.md").write_text(
            SOURCES.format(
                shape=args.shape,
                layers=config["num_hidden_layers"],
                seed=args.seed,
                params=params,
                tekken=TEKKEN_FILE,
                digest=script_digest(),
                max_length=args.max_length,
            )
        )
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(onnx_dir, out)
    print(f"done in {time.monotonic() - started:.0f} s: {out}")
    for path in sorted(out.iterdir()):
        print(f"  {path.name:24s} {path.stat().st_size:>10d}")


SOURCES = """# Mistral Small 3 format, {shape} shape: sources and licences

Made by `scripts/make_tekken_model.py --shape {shape}` (scripts sha256 `{digest}`), through
the recipe's own staging, builder command and genai_config patch (`scripts/export_mistral.py`).
Random weights (seed {seed}, {params} parameters, {layers} layers): the output is noise. The
architecture facts come from `models/mistral-small-3/config.json` (Mistral-Small-24B-Instruct-2501).

- Tokenizer: `{tekken}` shipped inside the mistral-common wheel (Apache-2.0), converted with
  transformers' `convert_tekken_tokenizer` (Apache-2.0). 131072 tokens, the first 1000 control
  tokens (`<s>`=1, `</s>`=2, `[INST]`=3, `[/INST]`=4, `[SYSTEM_PROMPT]`=17 ...).
- Chat template: mistral-common's `generate_chat_template(spm=False, tokenizer_version=v7)`.
- Export: onnxruntime-genai's model builder (MIT), int4 CPU, block 32, embedding quantized;
  `search.max_length` = {max_length} (KV preallocated per sequence), `context_length` as trained.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    parser.add_argument("--shape", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--layers", type=int, help="override num_hidden_layers")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-length", type=int, default=1024, help="KV preallocated per sequence")
    parser.add_argument("--max-batch-size", type=int, default=16)
    build(parser.parse_args(argv))


if __name__ == "__main__":
    main()
