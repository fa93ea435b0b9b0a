"""``bundle build``: describe an ONNX GenAI folder as a bundle (``bundle.json``).

An existing ONNX GenAI folder is copied and described; a Hugging Face checkpoint goes through
the recipe first (``--from-hf``, edge_agent/bundles/_recipe.py), which writes its output
straight into the bundle folder and then describes it here the same way.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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

__all__ = ["BuildRequest", "build_bundle", "describe_folder", "require_empty", "write_manifest"]

GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True, slots=True)
class BuildRequest:
    source: Path  # an ONNX GenAI folder (or, for the recipe, the Hugging Face checkpoint)
    out: Path
    name: str
    version: str
    release: int
    execution_provider: str = "cpu"
    precision: str = "int4"
    expires_in: timedelta | None = None
    min_agent_version: str = "0.1.0"


def require_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidArgument("--out", f"{out} must be a new or empty folder")


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


def write_manifest(folder: Path, req: BuildRequest) -> BundleManifest:
    """Describe ``folder`` (its ``config.json`` names the architecture) into bundle.json."""
    hf_config_path = folder / "config.json"
    hf_config = _json(hf_config_path) if hf_config_path.is_file() else None
    manifest = describe_folder(folder, req, hf_config)
    (folder / BUNDLE_JSON).write_bytes(manifest.to_json())
    return manifest


def build_bundle(req: BuildRequest) -> BundleManifest:
    """Copy an ONNX GenAI folder into ``req.out`` and write ``bundle.json``."""
    require_empty(req.out)
    if not (req.source / GENAI_CONFIG).is_file():
        if (req.source / "config.json").is_file():
            raise InvalidArgument(
                "source",
                f"{req.source} is a Hugging Face checkpoint, not an ONNX GenAI folder: "
                f"build it with --from-hf {req.source} --context TOKENS",
            )
        raise InvalidArgument("source", f"{req.source} has no {GENAI_CONFIG}")
    shutil.copytree(req.source, req.out, dirs_exist_ok=True, symlinks=False)
    for leftover in (req.out / BUNDLE_JSON, req.out / SIGNATURES_DIR):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink(missing_ok=True)
    return write_manifest(req.out, req)
