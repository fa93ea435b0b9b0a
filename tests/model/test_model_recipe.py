"""The Mistral Small 3 recipe (scripts/export_mistral.py) as the command an operator runs.

The builder itself needs torch (the build venv), so here the command is run with --dry-run on
a checkpoint folder shaped like Mistral-Small-24B-Instruct-2501's, and its staging and
genai_config steps run for real. scripts/make_tekken_model.py runs the full recipe (builder
included) to make the committed V7 fixture, whose SOURCES.md records both scripts' hash.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from tekken_fixture import FIXTURE, TEKKEN

ROOT = Path(__file__).resolve().parents[2]
MS3_CONFIG = ROOT / "models" / "mistral-small-3" / "config.json"


def _script(name: str) -> ModuleType:
    """Import scripts/<name>.py as running it would (its folder first on sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """Mistral-Small-24B-Instruct-2501's file set: HF files plus Mistral's own tekken.json."""
    hf = tmp_path / "ms3-hf"
    hf.mkdir()
    shutil.copyfile(MS3_CONFIG, hf / "config.json")
    shutil.copyfile(TEKKEN, hf / "tekken.json")
    (hf / "params.json").write_text("{}")
    (hf / "model-00001-of-00010.safetensors").write_bytes(b"weights")
    return hf


def test_dry_run_prints_a_builder_command_the_builder_accepts(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _script("export_mistral")
    out = tmp_path / "ms3-cpu-int4"
    recipe.main(["--hf", str(checkpoint), "--out", str(out), "--context", "8192", "--dry-run"])
    printed = capsys.readouterr().out
    assert "parameters: 23,572,403,200; builder peak RAM ~146 GB" in printed
    assert "convert tekken.json -> tokenizer.json" in printed
    assert "V7 chat template" in printed
    assert "search.max_length = model.context_length = 8192" in printed
    [line] = [ln for ln in printed.splitlines() if ln.startswith("$ python -m ")]
    words = line.split()
    extra = words.index("--extra_options")
    # Nothing but KEY=VALUE after --extra_options: a flag there ends the builder's list.
    assert all("=" in w and not w.startswith("-") for w in words[extra + 1 :])
    assert {"block_size=32", "accuracy_level=4", "op_types_to_quantize=MatMul/Gather"} <= set(
        words[extra + 1 :]
    )
    for flag, value in (("-o", str(out)), ("-p", "int4"), ("-e", "cpu")):
        assert words[words.index(flag) + 1] == value and words.index(flag) < extra
    assert not out.exists()  # a dry run touches nothing


def test_cuda_keeps_the_embedding_dense_and_extra_options_stay_last(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _script("export_mistral")
    args = ["--hf", str(checkpoint), "--out", str(tmp_path / "o"), "--context", "4096"]
    recipe.main([*args, "--ep", "cuda", "--option", "use_cuda_bf16=true", "--dry-run"])
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("$ python")]
    words = line.split()
    tail = words[words.index("--extra_options") + 1 :]
    assert tail == ["block_size=32", "use_cuda_bf16=true", "hf_token=false"]
    with pytest.raises(SystemExit):
        recipe.main([*args, "--option", "-o", "--dry-run"])  # not KEY=VALUE


def test_staging_hides_tekken_json_and_adds_the_v7_template(
    checkpoint: Path, tmp_path: Path
) -> None:
    recipe = _script("export_mistral")
    # The checkpoint already has tokenizer.json (as 2501 does) but no chat template.
    fixture_tokenizer_config = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    (checkpoint / "tokenizer.json").write_text("{}")
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(fixture_tokenizer_config))
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    stage = tmp_path / "stage"
    recipe.stage_checkpoint(checkpoint, stage)
    staged = {p.name for p in stage.iterdir()}
    # With tekken.json beside it transformers loads mistral-common's backend and the builder
    # writes no tokenizer.json: the builder never sees it.
    assert "tekken.json" not in staged and "params.json" not in staged
    assert {"config.json", "tokenizer.json", "model-00001-of-00010.safetensors"} <= staged
    template = json.loads((stage / "tokenizer_config.json").read_text())["chat_template"]
    assert template == (FIXTURE / "chat_template.jinja").read_text()
    assert "[SYSTEM_PROMPT]" in template and "[AVAILABLE_TOOLS]" in template
    assert not (stage / "tokenizer_config.json").is_symlink()
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before  # untouched


def test_genai_config_gets_one_context_and_greedy_defaults(tmp_path: Path) -> None:
    recipe = _script("export_mistral")
    # What the builder writes for Mistral Small 3: 32768 twice, top_k 50, no engine section.
    builder_out = json.loads((FIXTURE / "genai_config.json").read_text())
    builder_out["search"].update(max_length=32768, top_k=50, do_sample=False)
    builder_out.pop("engine")
    (tmp_path / "genai_config.json").write_text(json.dumps(builder_out))
    cfg = recipe.patch_genai_config(tmp_path, 8192, 16)
    assert cfg["search"]["max_length"] == cfg["model"]["context_length"] == 8192
    assert cfg["search"]["top_k"] == 1 and cfg["search"]["do_sample"] is False
    assert cfg["engine"] == {"static_batching": {"max_batch_size": 16}}
    assert json.loads((tmp_path / "genai_config.json").read_text()) == cfg
    # Asking for more than the model was trained for gives what it was trained for.
    cfg = recipe.patch_genai_config(tmp_path, 100_000, 16)
    assert cfg["search"]["max_length"] == cfg["model"]["context_length"] == 8192


def test_too_little_build_memory_is_refused_before_the_builder_runs(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _script("export_mistral")
    assert recipe.mem_available_bytes() > 0  # read from /proc/meminfo
    monkeypatch.setattr(recipe, "mem_available_bytes", lambda: 64 * 10**9)  # a 64 GB box
    out = tmp_path / "never"
    with pytest.raises(SystemExit, match="not enough memory"):
        recipe.main(["--hf", str(checkpoint), "--out", str(out), "--context", "8192"])
    assert not out.exists()


def test_bundle_build_records_the_served_context_and_true_architecture(tmp_path: Path) -> None:
    from tekken_fixture import tekken_model_dir

    from edge_agent.bundles._build import BuildRequest, build_bundle
    from edge_agent.bundles._format import memory_estimate
    from edge_agent.pressure import kv_bytes_per_token

    source = tekken_model_dir(tmp_path / "src")
    req = BuildRequest(source=source, out=tmp_path / "bundle", name="v7", version="1", release=1)
    facts = build_bundle(req, progress=False).model
    # max_length 1024 of a model trained for 32768: the engine allocates 1024 per sequence.
    assert facts.context_length == 1024
    assert facts.kv_bytes_per_token == kv_bytes_per_token(2, 2, 16, 4)
    per_token = facts.kv_bytes_per_token
    expected = memory_estimate(facts.weights_bytes, per_token, 1024)
    assert facts.memory_estimate_bytes == expected
    assert expected < memory_estimate(facts.weights_bytes, per_token, 32768)
    assert facts.architecture == "MistralForCausalLM"  # from the config.json the recipe copies
