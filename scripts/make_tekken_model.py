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
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    """What the committed fixture records, so a changed script without a rebuild is noticed."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def builder_command(hf_dir: Path, out: Path, cache: Path, ep: str, options: list[str]) -> list[str]:
    """The builder's command line: every KEY=VALUE after --extra_options, and nothing after them
    (another flag there ends the list: "unrecognized arguments")."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir)]
    cmd += ["-o", str(out), "-p", "int4", "-e", ep, "-c", str(cache)]
    return [*cmd, "--extra_options", *options]


def v7_template() -> str:
    from mistral_common.integrations.chat_templates.chat_templates import generate_chat_template
    from mistral_common.tokens.tokenizers.base import TokenizerVersion

    return str(
        generate_chat_template(
            spm=False,
            tokenizer_version=TokenizerVersion.v7,
            image_support=False,
            audio_support=False,
            thinking_support=False,
            default_system_prompt=None,
            plain_thinking_support=False,
            use_special_token_variables=False,
            model_settings_fields=None,
            reasoning_effort_values=None,
            reasoning_effort_default=None,
        )
    )


def tekken_path() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / TEKKEN_FILE


def save_tokenizer(hf_dir: Path, template: str) -> None:
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    fast = convert_tekken_tokenizer(str(tekken_path()), chat_template=template)
    fast.save_pretrained(hf_dir)


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


def patch_genai_config(out: Path, max_length: int, max_batch_size: int) -> dict[str, Any]:
    """search.max_length is what the static engine preallocates KV for per sequence (the builder
    writes the trained context, 32768: 10 GiB per sequence for the 24B on CPU); context_length
    stays the trained limit. The daemon serves min(both). Greedy-safe search defaults (the builder
    writes top_k 50)."""
    path = out / "genai_config.json"
    cfg: dict[str, Any] = json.loads(path.read_text())
    cfg["engine"] = {"static_batching": {"max_batch_size": max_batch_size}}
    search = cfg["search"]
    length = min(max_length, int(cfg["model"]["context_length"]))
    search.update(max_length=length, do_sample=False, num_beams=1, top_k=1, top_p=1.0)
    search.update(temperature=1.0, repetition_penalty=1.0)
    path.write_text(json.dumps(cfg, indent=4, sort_keys=True) + "\n")
    return cfg


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
        hf_dir, onnx_dir = tmp / "hf", tmp / "onnx"
        print(f"[1/4] tokenizer: {TEKKEN_FILE} (mistral-common) -> tokenizer.json, V7 template")
        template = v7_template()
        save_tokenizer(hf_dir, template)
        layers = config["num_hidden_layers"]
        print(f"[2/4] model: MistralForCausalLM, seed {args.seed}, {layers} layers")
        params = make_hf_model(config, hf_dir, args.seed)
        print(f"  {params} parameters")
        print("[3/4] export: onnxruntime-genai model builder, int4 CPU")
        options = ["block_size=32", "accuracy_level=4", "op_types_to_quantize=MatMul/Gather"]
        cmd = builder_command(hf_dir, onnx_dir, tmp / "cache", "cpu", [*options, "hf_token=false"])
        print("  $ python " + " ".join(cmd[1:]))
        env = dict(os.environ, ORT_DISABLE_TELEMETRY="1")
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"model builder failed with exit code {done.returncode}")
        patch_genai_config(onnx_dir, args.max_length, args.max_batch_size)
        # og reads the template from tokenizer_config.json; keep the .jinja file beside it.
        tcfg_path = onnx_dir / "tokenizer_config.json"
        tcfg = json.loads(tcfg_path.read_text())
        tcfg["chat_template"] = template
        tcfg_path.write_text(json.dumps(tcfg, indent=2, sort_keys=True) + "\n")
        (onnx_dir / "chat_template.jinja").write_text(template)
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

Made by `scripts/make_tekken_model.py --shape {shape}` (script sha256 `{digest}`).
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
