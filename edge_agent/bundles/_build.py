"""``bundle build``: convert Hugging Face weights to an ONNX GenAI folder and describe it.

The conversion runs the onnxruntime-genai model builder (or ``optimum-cli`` where the builder
lacks the architecture) as a subprocess, so a crash or an OOM in the converter never takes
the tool down and its output streams to the operator as it happens.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from edge_agent.bundles._format import (
    BUNDLE_JSON,
    SIGNATURES_DIR,
    BundleManifest,
    ModelFacts,
    kv_bytes_per_token,
    memory_estimate,
    parse_manifest,
)
from edge_agent.errors import BundleError, InvalidArgument
from edge_agent.pressure import context_from_genai_config

__all__ = ["BuildRequest", "build_bundle", "converter_command", "describe_folder"]

GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True, slots=True)
class BuildRequest:
    source: Path  # a Hugging Face model folder, or an existing ONNX GenAI folder
    out: Path
    name: str
    version: str
    release: int
    execution_provider: str = "cpu"
    precision: str = "int4"
    via: str = "builder"  # "builder" | "optimum"
    expires_in: timedelta | None = None
    min_agent_version: str = "0.1.0"
    # Passed to the builder as --extra_options KEY=VALUE ... (block_size=32, ...).
    builder_options: tuple[str, ...] = ()


def converter_command(req: BuildRequest, work: Path) -> list[list[str]]:
    """The subprocess command lines that turn ``req.source`` into an ONNX GenAI folder."""
    py = sys.executable
    builder = [py, "-m", "onnxruntime_genai.models.builder"]
    cache = str(work / "cache")
    if req.via == "builder":
        common = ["-o", str(req.out), "-p", req.precision, "-e", req.execution_provider]
        extra = ["--extra_options", *req.builder_options] if req.builder_options else []
        return [[*builder, "-i", str(req.source), *common, "-c", cache, *extra]]
    if req.via == "optimum":
        # optimum exports the graph; the builder then writes only genai_config + tokenizer.
        task = ["--task", "text-generation-with-past"]
        config_only = ["--extra_options", "config_only=true", *req.builder_options]
        common = ["-o", str(req.out), "-p", req.precision, "-e", req.execution_provider]
        return [
            ["optimum-cli", "export", "onnx", "--model", str(req.source), *task, str(req.out)],
            [*builder, "-i", str(req.source), *common, "-c", cache, *config_only],
        ]
    raise InvalidArgument("via", "must be builder or optimum")


def _run(cmd: list[str], bar: Any) -> None:
    bar.set_description(Path(cmd[0]).name if cmd[0] != sys.executable else cmd[2])
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
    except FileNotFoundError as exc:
        raise BundleError(f"{cmd[0]} is not installed") from exc
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            tail = [*tail[-19:], line]
            bar.set_postfix_str(line[-60:], refresh=False)
            bar.update(1)
    if proc.wait() != 0:
        raise BundleError(
            f"conversion failed (exit {proc.returncode}); last output:\n" + "\n".join(tail)
        )


# genai_config.json names the model type; bundle.json names the Hugging Face architecture.
_ARCHITECTURES = {
    "mistral": "MistralForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma": "GemmaForCausalLM",
}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path.name} is missing or not valid JSON") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path.name} is not a JSON object")
    return data


def describe_folder(
    folder: Path, req: BuildRequest, hf_config: dict[str, Any] | None
) -> BundleManifest:
    """Model facts from ``genai_config.json`` (and the HF config when there is one)."""
    genai_config = _json(folder / GENAI_CONFIG)
    genai = genai_config.get("model", {})
    dec = genai.get("decoder", {})
    try:
        layers = int(dec["num_hidden_layers"])
        kv_heads = int(dec.get("num_key_value_heads", dec["num_attention_heads"]))
        head = int(dec["head_size"])
        hidden = int(dec["hidden_size"])
        vocab = int(genai["vocab_size"])
        # What the engine serves and preallocates KV for: min(search.max_length, context_length).
        context = context_from_genai_config(genai_config)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{GENAI_CONFIG} lacks the decoder facts ({exc})") from exc
    genai_type = str(genai.get("type", "unknown"))
    arch = (hf_config or {}).get("architectures", [None])[0] or _ARCHITECTURES.get(
        genai_type, genai_type
    )
    # The builder keeps KV in fp32 on CPU and fp16 on accelerators.
    kv = kv_bytes_per_token(layers, kv_heads, head, 4 if req.execution_provider == "cpu" else 2)
    weights = sum(
        p.stat().st_size
        for p in folder.rglob("*")
        if p.is_file() and (p.suffix == ".onnx" or p.name.endswith(".onnx.data"))
    )
    now = datetime.now(UTC).replace(microsecond=0)
    manifest = BundleManifest(
        name=req.name,
        version=req.version,
        release=req.release,
        created_at=now,
        expires_at=now + req.expires_in if req.expires_in else None,
        min_agent_version=req.min_agent_version,
        model=ModelFacts(
            architecture=arch,
            quantization=req.precision,
            execution_providers=(req.execution_provider,),
            context_length=context,
            num_layers=layers,
            num_kv_heads=kv_heads,
            head_size=head,
            hidden_size=hidden,
            vocab_size=vocab,
            kv_bytes_per_token=kv,
            weights_bytes=weights,
            memory_estimate_bytes=memory_estimate(weights, kv, context),
        ),
    )
    return parse_manifest(manifest.to_json())  # the same validation a box applies


def build_bundle(req: BuildRequest, *, progress: bool = True) -> BundleManifest:
    """Convert (or copy an ONNX GenAI folder) into ``req.out`` and write ``bundle.json``."""
    if req.out.exists() and any(req.out.iterdir()):
        raise InvalidArgument("out", "must be a new or empty folder")
    hf_config_path = req.source / "config.json"
    hf_config = _json(hf_config_path) if hf_config_path.is_file() else None
    with tqdm(total=None, unit="line", disable=not progress, desc="build") as bar:
        if (req.source / GENAI_CONFIG).is_file():
            bar.set_description("copy ONNX GenAI folder")
            shutil.copytree(req.source, req.out, dirs_exist_ok=True, symlinks=False)
            for leftover in (req.out / BUNDLE_JSON, req.out / SIGNATURES_DIR):
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink(missing_ok=True)
        else:
            if hf_config is None:
                raise InvalidArgument("source", "neither a HF model folder nor an ONNX GenAI one")
            req.out.mkdir(parents=True, exist_ok=True)
            work = req.out.parent / f".{req.out.name}.build"
            try:
                for cmd in converter_command(req, work):
                    _run(cmd, bar)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        manifest = describe_folder(req.out, req, hf_config)
        (req.out / BUNDLE_JSON).write_bytes(manifest.to_json())
    return manifest
