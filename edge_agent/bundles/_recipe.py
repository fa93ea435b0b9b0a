"""``bundle build --from-hf``: a Hugging Face checkpoint in, an ONNX GenAI folder out.

The recipe for Mistral Small 3 (and other Llama/Mistral-style checkpoints the builder knows),
run on a build machine with the build extra (``pip install 'edge-agent[build]'``: torch,
transformers, mistral-common and the builder's onnx packages). Nothing here imports those at
module level, as the daemon never needs them: the builder runs as a subprocess of this
interpreter (``python -m onnxruntime_genai.models.builder``), and transformers and
mistral-common are imported only when a checkpoint needs its tokenizer converted or a template.

Steps, each of which went wrong by hand (models/mistral-small-3/README.md):

1. Tokenizer: a checkpoint that ships only Mistral's ``tekken.json`` gets a ``tokenizer.json``
   (transformers' ``convert_tekken_tokenizer``) carrying the checkpoint's own chat template
   (``chat_template.jinja`` or ``tokenizer_config.json``), else mistral-common's V7 template.
   The builder reads a staging folder of links to the checkpoint without ``tekken.json`` (and
   Mistral's own-format ``consolidated.safetensors``/``params.json``): with ``tekken.json``
   beside it, transformers loads the mistral-common backend and the builder writes no
   ``tokenizer.json``. The checkpoint itself is never modified.
2. Memory: the builder materialises every weight in fp32 before quantising (~6.2 bytes per
   parameter, ~146 GB for the 24B); too little RAM is refused before hours are lost.
3. The builder, every ``KEY=VALUE`` after ``--extra_options`` and nothing after them (another
   flag there ends the list: "unrecognized arguments"), with options per execution provider.
4. ``genai_config.json``: ``search.max_length`` and ``model.context_length`` both set from
   ``--context`` (the static engine preallocates KV for ``max_length`` per sequence),
   greedy-safe search defaults (the builder writes ``top_k`` 50), the static batch size; the
   checkpoint's ``config.json`` beside it, so the bundle names the true architecture.
5. The graph, for the static Engine: prefill runs the last layer's MLP and the LM head for
   each row's last prompt position only (``_last_logits.py``; identical logits and tokens;
   most of a 1- or 2-layer copy's prefill, ~5 % of the 40-layer model's).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from edge_agent._offline import offline_environment
from edge_agent.bundles._build import GENAI_CONFIG, BuildRequest, require_empty, write_manifest
from edge_agent.bundles._estimate import estimate
from edge_agent.bundles._format import BundleManifest
from edge_agent.bundles._last_logits import prune_to_last_position
from edge_agent.errors import BundleError, InvalidArgument

__all__ = [
    "BUILD_EXTRA",
    "OPTIONS",
    "Recipe",
    "RecipePlan",
    "build_from_checkpoint",
    "builder_command",
    "checkpoint_template",
    "last_position_logits",
    "patch_genai_config",
    "plan_recipe",
    "stage_checkpoint",
]

BUILD_EXTRA = "install the build extra: pip install 'edge-agent[build]'"
OPTIONS: Mapping[str, tuple[str, ...]] = {
    # The embedding Gather is quantised too: dense fp32 it would be 2.5 GiB of the 24B.
    "cpu": ("block_size=32", "accuracy_level=4", "op_types_to_quantize=MatMul/Gather"),
    # GatherBlockQuantized is verified on CPU only: the embedding stays dense fp16 elsewhere.
    "cuda": ("block_size=32",),
    "dml": ("block_size=32",),
    "webgpu": ("block_size=32",),
}
# What `python -m onnxruntime_genai.models.builder` imports besides onnxruntime-genai itself.
BUILDER_PACKAGES = ("torch", "transformers", "onnx", "onnx_ir", "onnxscript")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Mistral's own format beside the HF one: hidden from the builder (step 1).
NOT_STAGED = ("tekken.json", "consolidated.safetensors", "params.json")


@dataclass(frozen=True, slots=True)
class Recipe:
    checkpoint: Path
    context: int  # tokens served per request: search.max_length = model.context_length
    execution_provider: str = "cpu"
    max_batch_size: int = 16
    options: tuple[str, ...] = ()  # more builder KEY=VALUE options after the EP's own


@dataclass(frozen=True, slots=True)
class RecipePlan:
    """What ``build_from_checkpoint`` will do; ``--dry-run`` prints it and stops."""

    recipe: Recipe
    out: Path
    work: Path  # staging links and the builder's cache, removed afterwards
    architecture: str
    parameters: int
    build_peak_bytes: int
    mem_available_bytes: int | None
    context: int  # --context, capped at what the model was trained for
    tokenizer_steps: tuple[str, ...]
    missing_packages: tuple[str, ...]
    builder: tuple[str, ...]

    @property
    def stage(self) -> Path:
        return self.work / "hf"

    def describe(self) -> list[str]:
        ram = f"builder peak RAM ~{self.build_peak_bytes / 1e9:.0f} GB"
        if self.mem_available_bytes is not None:
            ram += f" (MemAvailable here {self.mem_available_bytes / 1e9:.0f} GB)"
            if self.mem_available_bytes < self.build_peak_bytes:
                ram += ": too little, refused without --force"
        lines = [f"checkpoint: {self.architecture}, {self.parameters:,} parameters; {ram}"]
        if self.missing_packages:
            lines.append(f"build extra: missing {', '.join(self.missing_packages)}")
        lines += [f"tokenizer: {step}" for step in self.tokenizer_steps]
        lines.append("$ " + shlex.join(["python", *self.builder[1:]]))
        asked = self.recipe.context
        capped = f" (asked {asked}; trained for {self.context})" if asked != self.context else ""
        lines.append(
            f"genai_config.json: search.max_length = model.context_length = {self.context}"
            f"{capped}; greedy search defaults; static batch {self.recipe.max_batch_size}"
        )
        lines.append(
            "graph: prefill runs the last layer's MLP and the LM head for each row's last "
            "prompt position only"
        )
        return lines


def builder_command(
    source: Path, out: Path, cache: Path, ep: str, options: tuple[str, ...]
) -> tuple[str, ...]:
    """Every KEY=VALUE follows --extra_options, and nothing follows them."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source)]
    cmd += ["-o", str(out), "-p", "int4", "-e", ep, "-c", str(cache)]
    return (*cmd, "--extra_options", *options, "hf_token=false")


def checkpoint_template(folder: Path) -> str | None:
    """The chat template a checkpoint ships: chat_template.jinja, else tokenizer_config.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    return template if isinstance(template, str) and template else None


def _mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _hf_config(checkpoint: Path) -> dict[str, Any]:
    if not checkpoint.is_dir():
        raise InvalidArgument("--from-hf", f"{checkpoint} is not a folder")
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidArgument("--from-hf", f"{checkpoint}/config.json is missing or bad") from exc
    if not isinstance(config, dict):
        raise InvalidArgument("--from-hf", "config.json is not a JSON object")
    return config


def plan_recipe(recipe: Recipe, out: Path, work: Path | None = None) -> RecipePlan:
    """Check the request and the checkpoint; touch nothing."""
    if recipe.context < 1:
        raise InvalidArgument("--context", "must be a positive number of tokens")
    if recipe.execution_provider not in OPTIONS:
        raise InvalidArgument("--ep", f"the recipe knows {', '.join(sorted(OPTIONS))}")
    if recipe.max_batch_size < 1:
        raise InvalidArgument("--max-batch-size", "must be positive")
    for option in recipe.options:
        if "=" not in option or option.startswith("-"):
            raise InvalidArgument("--builder-option", f"{option!r} is not KEY=VALUE")
    hf = recipe.checkpoint
    config = _hf_config(hf)
    try:
        figures = estimate(config, recipe.execution_provider)
    except (KeyError, TypeError) as exc:
        raise InvalidArgument("--from-hf", f"config.json lacks the decoder facts ({exc})") from exc
    steps = []
    template = checkpoint_template(hf)
    if not (hf / "tokenizer.json").is_file():
        if not (hf / "tekken.json").is_file():
            raise InvalidArgument("--from-hf", f"{hf} has neither tokenizer.json nor tekken.json")
        steps.append(
            "convert tekken.json -> tokenizer.json (transformers convert_tekken_tokenizer)"
        )
    if template is None:
        steps.append("chat template: mistral-common's V7 template (the checkpoint has none)")
    else:
        steps.append("chat template: the checkpoint's own")
    work = work or out.parent / f".{out.name}.build"
    options = (*OPTIONS[recipe.execution_provider], *recipe.options)
    archs = config.get("architectures") or ["unknown architecture"]
    return RecipePlan(
        recipe=recipe,
        out=out,
        work=work,
        architecture=str(archs[0]),
        parameters=int(figures["parameters"]),
        build_peak_bytes=int(figures["build_peak_bytes"]),
        mem_available_bytes=_mem_available_bytes(),
        context=min(recipe.context, int(figures["context_length"])),
        tokenizer_steps=tuple(steps),
        missing_packages=tuple(p for p in BUILDER_PACKAGES if importlib.util.find_spec(p) is None),
        builder=builder_command(
            work / "hf", out, work / "cache", recipe.execution_provider, options
        ),
    )


def _v7_template() -> str:
    try:
        from mistral_common.integrations.chat_templates.chat_templates import (
            generate_chat_template,
        )
        from mistral_common.tokens.tokenizers.base import TokenizerVersion
    except ImportError as exc:
        raise BundleError(f"the V7 chat template needs mistral-common: {BUILD_EXTRA}") from exc
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


def _convert_tekken(tekken: Path, into: Path, template: str) -> None:
    try:
        from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer
    except ImportError as exc:
        raise BundleError(f"converting tekken.json needs transformers: {BUILD_EXTRA}") from exc
    convert_tekken_tokenizer(str(tekken), chat_template=template).save_pretrained(str(into))
    (into / "tekken.json").unlink(missing_ok=True)  # the builder must not see it (step 1)


def stage_checkpoint(hf: Path, stage: Path) -> None:
    """Links to the checkpoint's files, plus the tokenizer files it lacks."""
    stage.mkdir(parents=True, exist_ok=True)
    for item in sorted(hf.iterdir()):
        if item.name not in NOT_STAGED and not item.name.startswith("."):
            (stage / item.name).symlink_to(item.resolve())
    template = checkpoint_template(hf)
    if not (hf / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            (stage / name).unlink(missing_ok=True)
        _convert_tekken(hf / "tekken.json", stage, template or _v7_template())
    elif template is None:
        path = stage / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        config["chat_template"] = _v7_template()
        path.unlink(missing_ok=True)  # a link into the checkpoint: write a file of our own
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def patch_genai_config(out: Path, context: int, max_batch_size: int) -> dict[str, Any]:
    """One context: max_length (what the engine preallocates) and context_length together,
    never above what the model was trained for; greedy-safe search defaults."""
    path = out / GENAI_CONFIG
    cfg: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    length = min(context, int(cfg["model"]["context_length"]))
    cfg["model"]["context_length"] = length
    search = cfg["search"]
    search.update(max_length=length, do_sample=False, num_beams=1, top_k=1, top_p=1.0)
    search.update(temperature=1.0, repetition_penalty=1.0)
    if "dynamic_batching" not in cfg.get("engine", {}):
        cfg["engine"] = {"static_batching": {"max_batch_size": max_batch_size}}
    path.write_text(json.dumps(cfg, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    return cfg


def last_position_logits(out: Path, cfg: Mapping[str, Any]) -> bool:
    """The static Engine's graph edit (``_last_logits.py``); a PagedAttention build
    (``dynamic_batching``) packs its rows another way and keeps the builder's graph, as does
    one without a pad id of its own (the Engine pads rows with it)."""
    model = cfg["model"]
    if "dynamic_batching" in cfg.get("engine", {}) or "pad_token_id" not in model:
        return False
    eos = model.get("eos_token_id", [])
    if model["pad_token_id"] in (eos if isinstance(eos, list) else [eos]):
        return False  # a real end-of-turn token would read as padding
    decoder = model["decoder"]
    return prune_to_last_position(
        out / decoder["filename"],
        decoder["outputs"]["logits"],
        decoder["inputs"]["input_ids"],
        int(model["pad_token_id"]),
    )


def _finish_output(out: Path, hf: Path) -> None:
    """Beside the graph the daemon needs the tokenizer and a chat template; the HF
    config.json gives bundle.json the true architecture name."""
    shutil.copyfile(hf / "config.json", out / "config.json")
    if not (out / "tokenizer.json").is_file():
        raise BundleError(f"the builder wrote no tokenizer.json into {out}")
    if checkpoint_template(out) is None:
        raise BundleError(f"the builder wrote no chat template into {out}")


def _run_builder(cmd: tuple[str, ...], progress: bool) -> None:
    """The builder's output scrolls through a progress bar; its last lines if it fails."""
    with tqdm(total=None, unit="line", disable=not progress, desc="model builder") as bar:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=offline_environment(),
        )
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
            f"the model builder failed (exit {proc.returncode}); last output:\n" + "\n".join(tail)
        )


def build_from_checkpoint(
    req: BuildRequest, plan: RecipePlan, *, force: bool = False, progress: bool = True
) -> BundleManifest:
    """Run the plan into ``req.out`` and write ``bundle.json``; on failure leave no half
    bundle behind."""
    need, have = plan.build_peak_bytes, plan.mem_available_bytes
    if have is not None and have < need and not force:
        raise BundleError(
            f"not enough memory for the builder here: it peaks at ~{need / 1e9:.0f} GB, "
            f"MemAvailable is {have / 1e9:.0f} GB (--force to try anyway)"
        )
    if plan.missing_packages:
        raise BundleError(f"the builder needs {', '.join(plan.missing_packages)}: {BUILD_EXTRA}")
    require_empty(req.out)
    existed = req.out.exists()
    shutil.rmtree(plan.work, ignore_errors=True)  # a run killed before its cleanup
    try:
        stage_checkpoint(plan.recipe.checkpoint, plan.stage)
        req.out.mkdir(parents=True, exist_ok=True)
        _run_builder(plan.builder, progress)
        _finish_output(req.out, plan.recipe.checkpoint)
        cfg = patch_genai_config(req.out, plan.context, plan.recipe.max_batch_size)
        last_position_logits(req.out, cfg)
        return write_manifest(req.out, req)
    except BaseException:
        if existed:
            for item in req.out.iterdir():
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        else:
            shutil.rmtree(req.out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(plan.work, ignore_errors=True)
