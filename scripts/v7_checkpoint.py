"""Random-weight checkpoints in the Mistral Small 3 format, exported by the operator's command.

Shared by scripts/make_tekken_model.py (the committed CI fixture, tiny shape) and
scripts/make_real_shape_model.py (an N-layer copy of the exact 24B config, for benchmarks).
Both run offline in the build venv (``pip install -e '.[build]'``).

The checkpoint is what Mistral's own releases can be: ``config.json``, safetensors weights
and only ``tekken.json`` (mistral-common's shipped ``tekken_240911.json``, 131072 tokens),
with no ``tokenizer.json`` and no chat template. ``edge-agent bundle build --from-hf`` then
does the whole recipe (tokenizer conversion, V7 template, builder, genai_config), so every
model made here proves that command. Weights are seeded random: the output is noise; what
these models prove is the format (tokenizer, chat encoding, shapes, context), never quality.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REAL_CONFIG = ROOT / "models" / "mistral-small-3" / "config.json"
TEKKEN_FILE = "tekken_240911.json"
# What makes the committed fixture's bytes: a change here without a rebuild fails tests/model.
FIXTURE_SOURCES = (
    ROOT / "scripts" / "make_tekken_model.py",
    ROOT / "scripts" / "v7_checkpoint.py",
    ROOT / "edge_agent" / "bundles" / "_recipe.py",
    ROOT / "edge_agent" / "bundles" / "_last_logits.py",
)


def sources_digest() -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in FIXTURE_SOURCES)).hexdigest()


def real_config(layers: int | None = None) -> dict[str, Any]:
    """Mistral-Small-24B-Instruct-2501's config.json, optionally with fewer layers."""
    config: dict[str, Any] = json.loads(REAL_CONFIG.read_text())
    if layers is not None:
        config["num_hidden_layers"] = layers
    return config


def tekken_path() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / TEKKEN_FILE


def parameter_count(config: dict[str, Any]) -> int:
    from edge_agent.bundles._estimate import estimate

    return int(estimate(config)["parameters"])


def write_checkpoint_files(config: dict[str, Any], hf_dir: Path) -> None:
    """config.json and tekken.json: enough for ``bundle build --from-hf --dry-run``."""
    hf_dir.mkdir(parents=True, exist_ok=True)
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(tekken_path(), hf_dir / "tekken.json")


def make_checkpoint(config: dict[str, Any], hf_dir: Path, seed: int) -> int:
    """A seeded random MistralForCausalLM saved as Hugging Face safetensors + tekken.json."""
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
    shutil.copyfile(tekken_path(), hf_dir / "tekken.json")
    return sum(p.numel() for p in model.parameters())


def bundle_build_command(
    hf_dir: Path, out: Path, name: str, context: int, *, dry_run: bool = False
) -> list[str]:
    """The operator's command, run by this interpreter (the build venv's edge-agent)."""
    cmd = [sys.executable, "-m", "edge_agent.cli", "bundle", "build", "--from-hf", str(hf_dir)]
    cmd += ["--out", str(out), "--name", name, "--version", "0", "--release", "1"]
    cmd += ["--ep", "cpu", "--context", str(context), "--no-expiry", "--quiet"]
    return [*cmd, "--dry-run"] if dry_run else cmd


def run(cmd: list[str]) -> None:
    print("  $ " + " ".join(["edge-agent", *cmd[3:]]), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise SystemExit(f"edge-agent bundle build failed with exit code {done.returncode}")
