"""The Mistral Small 3 recipe as one command: a Hugging Face checkpoint in, an ONNX GenAI folder.

Runs on the build machine, in the build venv (torch, transformers, mistral-common,
onnxruntime-genai's builder; see models/mistral-small-3/README.md):

    .venv-build/bin/python scripts/export_mistral.py --hf ./ms3-hf --out ./ms3-cpu-int4 \\
        --ep cpu --context 8192
    .venv/bin/edge-agent bundle build ./ms3-cpu-int4 --out ./bundle --name ... --version ...

Steps, each of which went wrong by hand:

1. Tokenizer: when the checkpoint ships only Mistral's ``tekken.json``, it is converted with
   transformers' ``convert_tekken_tokenizer``; when it has no chat template, mistral-common's
   V7 template is written. The builder reads a staging folder of links to the checkpoint without
   ``tekken.json`` (and Mistral's own-format ``consolidated.safetensors``/``params.json``): with
   ``tekken.json`` beside it, transformers loads the mistral-common backend and the builder
   writes no ``tokenizer.json`` at all. The checkpoint folder is never modified.
2. Build-machine memory: the builder materialises every weight in fp32 before quantising
   (measured peak ~6.2 bytes per parameter: ~146 GB for the 24B). Too little RAM is refused
   before hours of work are lost (``--force`` overrides).
3. The builder, with every ``KEY=VALUE`` after ``--extra_options`` and nothing after them
   (another flag there ends the list: "unrecognized arguments"), options per execution provider.
4. ``genai_config.json``: ``search.max_length`` and ``model.context_length`` both set to
   ``--context`` (the static engine preallocates KV for max_length per sequence: 10 GiB at the
   builder's 32768 for the 24B on CPU), greedy-safe search defaults (the builder writes
   ``top_k`` 50), the static batch size.

``--dry-run`` prints what would run and touches nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from model_estimate import estimate

OPTIONS = {
    # The embedding Gather is quantised too: dense fp32 it would be 2.5 GiB of the 24B.
    "cpu": ["block_size=32", "accuracy_level=4", "op_types_to_quantize=MatMul/Gather"],
    # GatherBlockQuantized is verified on CPU only: the embedding stays dense fp16 elsewhere.
    "cuda": ["block_size=32"],
    "dml": ["block_size=32"],
    "webgpu": ["block_size=32"],
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Mistral's own format beside the HF one: hidden from the builder (see step 1).
NOT_STAGED = ("tekken.json", "consolidated.safetensors", "params.json")


def builder_command(source: Path, out: Path, cache: Path, ep: str, options: list[str]) -> list[str]:
    """Every KEY=VALUE follows --extra_options, and nothing follows them."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source)]
    cmd += ["-o", str(out), "-p", "int4", "-e", ep, "-c", str(cache)]
    return [*cmd, "--extra_options", *options, "hf_token=false"]


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


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


def tokenizer_plan(hf: Path) -> list[str]:
    """What stage_checkpoint will add to the checkpoint's own files."""
    plan = []
    if not (hf / "tokenizer.json").is_file():
        if not (hf / "tekken.json").is_file():
            raise SystemExit(f"{hf} has neither tokenizer.json nor tekken.json")
        plan.append("convert tekken.json -> tokenizer.json (transformers convert_tekken_tokenizer)")
    if not has_chat_template(hf):
        plan.append("write mistral-common's V7 chat template")
    return plan


def stage_checkpoint(hf: Path, stage: Path) -> None:
    """Links to the checkpoint's files, plus the tokenizer files it lacks."""
    stage.mkdir(parents=True, exist_ok=True)
    for item in hf.iterdir():
        if item.name not in NOT_STAGED:
            (stage / item.name).symlink_to(item.resolve())
    template = None if has_chat_template(hf) else v7_template()
    if not (hf / "tokenizer.json").is_file():
        from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

        for name in TOKENIZER_FILES:
            (stage / name).unlink(missing_ok=True)
        fast = convert_tekken_tokenizer(str(hf / "tekken.json"), chat_template=template)
        fast.save_pretrained(stage)
    elif template is not None:
        path = stage / "tokenizer_config.json"
        config = json.loads(path.read_text()) if path.exists() else {}
        config["chat_template"] = template
        path.unlink(missing_ok=True)  # a link into the checkpoint: write a file of our own
        path.write_text(json.dumps(config, indent=2) + "\n")


def patch_genai_config(
    out: Path, context: int, max_batch_size: int, *, keep_trained_context: bool = False
) -> dict[str, Any]:
    """One context: max_length (what the engine preallocates) and context_length together;
    greedy-safe search defaults. ``keep_trained_context`` leaves context_length as the builder
    wrote it (test fixtures that prove the daemon serves the smaller of the two)."""
    path = out / "genai_config.json"
    cfg: dict[str, Any] = json.loads(path.read_text())
    length = min(context, int(cfg["model"]["context_length"]))
    if not keep_trained_context:
        cfg["model"]["context_length"] = length
    search = cfg["search"]
    search.update(max_length=length, do_sample=False, num_beams=1, top_k=1, top_p=1.0)
    search.update(temperature=1.0, repetition_penalty=1.0)
    if "dynamic_batching" not in cfg.get("engine", {}):
        cfg["engine"] = {"static_batching": {"max_batch_size": max_batch_size}}
    path.write_text(json.dumps(cfg, indent=4, sort_keys=True) + "\n")
    return cfg


def check_output(out: Path, hf: Path) -> None:
    """What the daemon needs beside the graph: the tokenizer and a chat template; and the HF
    config.json, from which ``bundle build`` takes the true architecture name."""
    shutil.copyfile(hf / "config.json", out / "config.json")
    if not (out / "tokenizer.json").is_file():
        raise SystemExit(f"the builder wrote no tokenizer.json into {out}")
    if not has_chat_template(out):
        raise SystemExit(f"the builder wrote no chat template into {out}")


def mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run(cmd: list[str]) -> None:
    env = dict(os.environ, ORT_DISABLE_TELEMETRY="1")
    done = subprocess.run(cmd, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"model builder failed with exit code {done.returncode}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", type=Path, required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="ONNX GenAI folder (new)")
    parser.add_argument("--ep", choices=sorted(OPTIONS), default="cpu")
    parser.add_argument("--context", type=int, required=True, help="tokens served per request")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--option", action="append", default=[], help="extra KEY=VALUE")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--force", action="store_true", help="build despite too little RAM")
    args = parser.parse_args(argv)
    if args.context < 1:
        parser.error("--context must be positive")
    if any("=" not in option for option in args.option):
        parser.error("--option takes KEY=VALUE")
    hf_config = json.loads((args.hf / "config.json").read_text())
    figures = estimate(hf_config, args.ep)
    params, need = int(figures["parameters"]), int(figures["build_peak_bytes"])
    available = mem_available_bytes()
    plan = tokenizer_plan(args.hf)
    with tempfile.TemporaryDirectory(prefix="export-mistral-") as tmp_s:
        tmp = Path(tmp_s)
        source = tmp / "hf"
        cmd = builder_command(
            source, args.out, tmp / "cache", args.ep, [*OPTIONS[args.ep], *args.option]
        )
        print(f"parameters: {params:,}; builder peak RAM ~{need / 1e9:.0f} GB", end="")
        print(f" (MemAvailable {available / 1e9:.0f} GB)" if available else "")
        for step in plan:
            print(f"tokenizer: {step}")
        print("$ " + " ".join(["python", *cmd[1:]]))
        print(f"genai_config.json: search.max_length = model.context_length = {args.context}")
        if args.dry_run:
            return
        if available is not None and available < need and not args.force:
            raise SystemExit("not enough memory for the builder here (--force to try anyway)")
        if args.out.exists() and any(args.out.iterdir()):
            raise SystemExit(f"{args.out} must be a new or empty folder")
        stage_checkpoint(args.hf, source)
        run(cmd)
    check_output(args.out, args.hf)
    cfg = patch_genai_config(args.out, args.context, args.max_batch_size)
    print(f"done: {args.out} (context {cfg['search']['max_length']})")
    print(f"next: edge-agent bundle build {args.out} --out BUNDLE --name NAME --version V ...")


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    main()
