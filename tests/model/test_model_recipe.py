"""``edge-agent bundle build --from-hf``: the Mistral Small 3 recipe as the command an operator runs.

Everywhere (CI included): the command with ``--dry-run`` on a checkpoint folder shaped like
Mistral-Small-24B-Instruct-2501's (its config.json and a real Tekken file) prints a builder
command that the builder's own argparse accepts; the staging, genai_config and memory steps
run for real; the bundle facts of the committed fixture, which scripts/make_tekken_model.py
made with this very command (its SOURCES.md records the hash of the recipe's code).

With the build extra only (torch + transformers importable; CI installs the test extra, not
the build extra, so these skip there with that reason): the full command through the real
builder into a signed bundle that the box's own verify accepts, on a tiny checkpoint made
here; the Tekken conversion; a failing builder leaving nothing behind.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import onnxruntime_genai as og
import pytest
from script_import import load_script
from tekken_fixture import FIXTURE, TEKKEN

from edge_agent.bundles._recipe import (
    Recipe,
    build_from_checkpoint,
    patch_genai_config,
    plan_recipe,
    stage_checkpoint,
)
from edge_agent.bundles.cli import add_bundle_commands, add_keys_commands
from edge_agent.errors import BundleError

ROOT = Path(__file__).resolve().parents[2]
MS3_CONFIG = ROOT / "models" / "mistral-small-3" / "config.json"
BUILD_EXTRA = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "onnx_ir"))
needs_build_extra = pytest.mark.skipif(
    not BUILD_EXTRA, reason="needs the build extra (torch, transformers): CI installs only [test]"
)


def _cli(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bundle_commands(sub)
    add_keys_commands(sub)
    args = parser.parse_args([str(a) for a in argv])
    code: int = args.func(args)
    return code


def _builder_args(command: list[str]) -> argparse.Namespace:
    """Parse ``command`` with the builder's own ``get_args`` (its module imports torch, so
    the function alone is taken from the installed onnxruntime-genai's source)."""
    source = Path(og.__file__).parent / "models" / "builder.py"
    [fn] = [
        node
        for node in ast.parse(source.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name == "get_args"
    ]
    namespace: dict[str, Any] = {"argparse": argparse, "os": os, "textwrap": textwrap}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(source), "exec"), namespace)  # noqa: S102
    assert command[:3] == ["python", "-m", "onnxruntime_genai.models.builder"]
    saved = sys.argv
    sys.argv = ["builder", *command[3:]]
    try:
        args: argparse.Namespace = namespace["get_args"]()
    finally:
        sys.argv = saved
    return args


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


def _build_args(hf: Path, out: Path, *more: str) -> list[str]:
    return ["bundle", "build", "--from-hf", str(hf), "--out", str(out), "--name", "ms3",
            "--version", "2501", "--release", "1", *more]  # fmt: skip


def test_dry_run_prints_a_builder_command_the_builder_accepts(
    checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ms3-cpu-int4"
    # The installed entry point, as an operator runs it.
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *_build_args(checkpoint, out),
         "--context", "8192", "--dry-run"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = done.stdout
    assert "MistralForCausalLM, 23,572,403,200 parameters; builder peak RAM ~146 GB" in printed
    assert "convert tekken.json -> tokenizer.json" in printed
    assert "mistral-common's V7 template (the checkpoint has none)" in printed
    assert "search.max_length = model.context_length = 8192; greedy" in printed
    [line] = [ln for ln in printed.splitlines() if ln.startswith("$ python -m ")]
    words = shlex.split(line[2:])
    args = _builder_args(words)
    assert args.output == str(out) and args.precision == "int4"
    assert args.execution_provider == "cpu"
    assert args.input == str(tmp_path / ".ms3-cpu-int4.build" / "hf")  # the staging folder
    assert args.extra_options == [
        "block_size=32", "accuracy_level=4", "op_types_to_quantize=MatMul/Gather", "hf_token=false"
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ms3-hf"]  # a dry run touches nothing


def test_cuda_keeps_the_embedding_dense_and_extra_options_stay_last(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    more = ["--ep", "cuda", "--context", "100000", "--builder-option", "use_cuda_bf16=true"]
    assert _cli(*_build_args(checkpoint, out, *more, "--dry-run")) == 0
    printed = capsys.readouterr().out
    [line] = [ln for ln in printed.splitlines() if ln.startswith("$ python")]
    args = _builder_args(shlex.split(line[2:]))
    assert args.execution_provider == "cuda"
    assert args.extra_options == ["block_size=32", "use_cuda_bf16=true", "hf_token=false"]
    # More than the model was trained for: what it was trained for, said so.
    assert "context_length = 32768 (asked 100000; trained for 32768)" in printed
    # A flag where a KEY=VALUE belongs would end the builder's list: refused.
    assert _cli(*_build_args(checkpoint, out, "--context", "8", "--builder-option=-o")) == 1
    assert "--builder-option: '-o' is not KEY=VALUE" in capsys.readouterr().err
    assert _cli(*_build_args(checkpoint, out, "--ep", "qnn", "--context", "8")) == 1
    assert "--ep: the recipe knows cpu, cuda, dml, webgpu" in capsys.readouterr().err
    assert _cli(*_build_args(checkpoint, out)) == 1
    assert "--context: required with --from-hf" in capsys.readouterr().err
    assert not out.exists()


def test_staging_hides_tekken_json_and_adds_the_v7_template(
    checkpoint: Path, tmp_path: Path
) -> None:
    # The checkpoint already has tokenizer.json (as 2501 does) but no chat template.
    fixture_tokenizer_config = json.loads((FIXTURE / "tokenizer_config.json").read_text())
    (checkpoint / "tokenizer.json").write_text("{}")
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(fixture_tokenizer_config))
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    stage = tmp_path / "stage"
    stage_checkpoint(checkpoint, stage)
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
    # What the builder writes for Mistral Small 3: 32768 twice, top_k 50, no engine section.
    builder_out = json.loads((FIXTURE / "genai_config.json").read_text())
    builder_out["search"].update(max_length=32768, top_k=50, do_sample=False)
    builder_out.pop("engine")
    (tmp_path / "genai_config.json").write_text(json.dumps(builder_out))
    cfg = patch_genai_config(tmp_path, 8192, 16)
    assert cfg["search"]["max_length"] == cfg["model"]["context_length"] == 8192
    assert cfg["search"]["top_k"] == 1 and cfg["search"]["do_sample"] is False
    assert cfg["engine"] == {"static_batching": {"max_batch_size": 16}}
    assert json.loads((tmp_path / "genai_config.json").read_text()) == cfg
    # Asking for more than the model was trained for gives what it was trained for.
    cfg = patch_genai_config(tmp_path, 100_000, 16)
    assert cfg["search"]["max_length"] == cfg["model"]["context_length"] == 8192


def test_too_little_build_memory_is_refused_before_anything_runs(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    plan = plan_recipe(Recipe(checkpoint, 8192), out)
    assert plan.mem_available_bytes is not None and plan.mem_available_bytes > 0  # /proc/meminfo
    if plan.mem_available_bytes < plan.build_peak_bytes:  # this machine, for real, via the CLI
        assert _cli(*_build_args(checkpoint, out, "--context", "8192", "--quiet")) == 1
        err = capsys.readouterr().err
        assert "not enough memory for the builder here: it peaks at ~146 GB" in err
        assert "(--force to try anyway)" in err
    # A 64 GB build machine with every package installed.
    plan = dataclasses.replace(plan, mem_available_bytes=64 * 10**9, missing_packages=())
    from edge_agent.bundles._build import BuildRequest

    req = BuildRequest(source=checkpoint, out=out, name="m", version="1", release=1)
    with pytest.raises(BundleError, match=r"peaks at ~146 GB, MemAvailable is 64 GB"):
        build_from_checkpoint(req, plan, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ms3-hf"]


def test_bundle_estimate_prints_the_readme_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("bundle", "estimate", "--config", MS3_CONFIG, "--markdown") == 0
    readme = (MS3_CONFIG.parent / "README.md").read_text()
    table = readme.split("<!-- estimate-table -->\n", 1)[1].split("\n<!-- /estimate-table -->")[0]
    assert capsys.readouterr().out == table + "\n"
    assert _cli("bundle", "estimate", "--config", MS3_CONFIG, "--ep", "cuda") == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["kv_bytes_per_token"]["fp16"] == 2 * 40 * 8 * 128 * 2


def test_bundle_build_records_the_served_context_and_true_architecture(tmp_path: Path) -> None:
    from tekken_fixture import tekken_model_dir

    from edge_agent.bundles._build import BuildRequest, build_bundle
    from edge_agent.bundles._format import memory_estimate
    from edge_agent.pressure import kv_bytes_per_token

    source = tekken_model_dir(tmp_path / "src")
    req = BuildRequest(source=source, out=tmp_path / "bundle", name="v7", version="1", release=1)
    facts = build_bundle(req).model
    # max_length 1024 of a model trained for 32768: the engine allocates 1024 per sequence.
    assert facts.context_length == 1024
    assert facts.kv_bytes_per_token == kv_bytes_per_token(2, 2, 16, 4)
    per_token = facts.kv_bytes_per_token
    expected = memory_estimate(facts.weights_bytes, per_token, 1024)
    assert facts.memory_estimate_bytes == expected
    assert expected < memory_estimate(facts.weights_bytes, per_token, 32768)
    assert facts.architecture == "MistralForCausalLM"  # from the config.json the recipe copies


def test_real_shape_script_dry_run_runs_the_command(tmp_path: Path) -> None:
    """scripts/make_real_shape_model.py (build extra for real runs; its dry run needs none)."""
    out = tmp_path / "ms3-2l"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_real_shape_model.py"),
         "--layers", "2", "--out", str(out), "--context", "4096", "--dry-run"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("ms3-2l-random: ") and first.endswith(" parameters, seed 1234")
    # The 2-layer copy measured 2.45B parameters (DESIGN.md) when it was built.
    assert 2.44e9 < int(first.split()[1].replace(",", "")) < 2.46e9
    assert "builder peak RAM ~15 GB" in done.stdout  # 6.2 bytes/parameter, as measured
    assert "search.max_length = model.context_length = 4096" in done.stdout
    [line] = [ln for ln in done.stdout.splitlines() if ln.startswith("$ python -m ")]
    assert _builder_args(shlex.split(line[2:])).output == str(out)
    assert not out.exists()


# -- with the build extra -------------------------------------------------------------------
def _tiny_checkpoint(hf: Path, *, layers: int = 1) -> int:
    """Seeded random weights in the fixture's tiny shape, shipping only tekken.json."""
    checkpoint = load_script("v7_checkpoint")
    tiny = load_script("make_tekken_model").TINY
    config = {**checkpoint.real_config(), **tiny, "num_hidden_layers": layers}
    params: int = checkpoint.make_checkpoint(config, hf, seed=7)
    return params


@needs_build_extra
def test_from_hf_through_the_real_builder_into_a_bundle_the_box_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf, out, keys = tmp_path / "hf", tmp_path / "bundle", tmp_path / "keys"
    _tiny_checkpoint(hf)
    # The checkpoint's own template (as 2501's tokenizer_config.json has): it must survive
    # the Tekken conversion.
    own = "{#- the checkpoint's own -#}\n" + (FIXTURE / "chat_template.jinja").read_text()
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": own}))
    before = sorted(p.name for p in hf.iterdir())
    assert _cli("keys", "generate", "--out-dir", keys, "--name", "ops") == 0
    capsys.readouterr()
    rc = _cli(*_build_args(hf, out, "--context", "512", "--quiet", "--sign", str(keys / "ops.key")))
    assert rc == 0
    captured = capsys.readouterr()
    assert "chat template: the checkpoint's own" in captured.err  # the plan, on stderr
    manifest = json.loads(captured.out)  # stdout is bundle.json alone
    assert manifest == json.loads((out / "bundle.json").read_text())
    assert manifest["model"]["context_length"] == 512
    assert manifest["model"]["architecture"] == "MistralForCausalLM"
    assert manifest["model"]["head_size"] == 16 and manifest["model"]["vocab_size"] == 131072
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["search"]["max_length"] == genai["model"]["context_length"] == 512
    assert genai["search"]["top_k"] == 1 and genai["search"]["do_sample"] is False
    assert genai["engine"] == {"static_batching": {"max_batch_size": 16}}
    assert (out / "chat_template.jinja").read_text() == own
    assert not (out / "tekken.json").exists()
    assert sorted(p.name for p in hf.iterdir()) == before  # the checkpoint is never modified
    assert not (tmp_path / ".bundle.build").exists()
    # The box's own admission code accepts it; the engine loads it and reads control tokens.
    assert _cli("bundle", "verify", out, "--public-key", keys / "ops.pub") == 0
    assert "verified: 1 valid signature(s), 1 required" in capsys.readouterr().out
    tokenizer = og.Tokenizer(og.Model(str(out)))
    assert list(tokenizer.encode("[INST]")) == [3]


@needs_build_extra
def test_cuda_export_keeps_the_embedding_dense_with_fp16_kv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CUDA options on a machine without a GPU: the builder only writes the graph."""
    import onnx

    from edge_agent.bundles._estimate import estimate

    hf, out = tmp_path / "hf", tmp_path / "bundle"
    _tiny_checkpoint(hf)
    assert _cli(*_build_args(hf, out, "--ep", "cuda", "--context", "512", "--quiet")) == 0
    manifest = json.loads(capsys.readouterr().out)["model"]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    kv = [i for i in graph.graph.input if i.name.startswith("past_key_values.")]
    assert {i.type.tensor_type.elem_type for i in kv} == {onnx.TensorProto.FLOAT16}
    assert manifest["execution_providers"] == ["cuda"]
    assert manifest["kv_bytes_per_token"] == 2 * 1 * 2 * 16 * 2  # fp16, as the graph says
    genai = json.loads((out / "genai_config.json").read_text())
    assert "cuda" in genai["model"]["decoder"]["session_options"]["provider_options"][0]
    assert genai["search"]["max_length"] == genai["model"]["context_length"] == 512
    # block_size=32 only: the embedding stays dense fp16, to the byte the estimator says.
    figures = estimate(json.loads((hf / "config.json").read_text()), "cuda")
    assert (out / "model.onnx.data").stat().st_size == figures["weights_bytes_embedding_dense"]


@needs_build_extra
def test_tekken_only_checkpoint_gets_the_v7_template(tmp_path: Path) -> None:
    hf, stage = tmp_path / "hf", tmp_path / "stage"
    hf.mkdir()
    shutil.copyfile(MS3_CONFIG, hf / "config.json")
    shutil.copyfile(TEKKEN, hf / "tekken.json")
    stage_checkpoint(hf, stage)
    assert not (stage / "tekken.json").exists()
    assert (stage / "chat_template.jinja").read_text() == (
        FIXTURE / "chat_template.jinja"
    ).read_text()
    vocab = json.loads((stage / "tokenizer.json").read_text())
    assert len(vocab["model"]["vocab"]) + len(vocab["added_tokens"]) >= 131072


@needs_build_extra
def test_a_failing_builder_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf, out = tmp_path / "hf", tmp_path / "bundle"
    _tiny_checkpoint(hf)
    [weights] = hf.glob("*.safetensors")
    weights.write_bytes(b"not safetensors")
    assert _cli(*_build_args(hf, out, "--context", "512", "--quiet")) == 1
    err = capsys.readouterr().err
    assert "error: the model builder failed (exit 1); last output:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no bundle, no work folder


def test_check_prompts_script_judges_a_bundle_by_mistral_common(tmp_path: Path) -> None:
    """What an operator runs on the build machine against the real checkpoint's tekken.json."""
    from tekken_fixture import tekken_model_dir

    model = tekken_model_dir(tmp_path)

    def check(folder: Path, tekken: Path) -> subprocess.CompletedProcess[str]:
        script = str(ROOT / "scripts" / "check_prompts.py")
        return subprocess.run(
            [sys.executable, script, "--model", str(folder), "--tekken", str(tekken)],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip

    done = check(model, TEKKEN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "equal: control-token text from a user" in done.stdout
    assert "6/6 conversations equal to mistral-common's ids" in done.stdout
    # A bundle whose tokenizer.json is not the checkpoint's: two ids swapped ("Hi", sent in
    # the multi-turn conversation only, and its neighbour).
    from tokenizers import Tokenizer

    wrong = tmp_path / "wrong"
    shutil.copytree(model, wrong)
    [hi] = Tokenizer.from_file(str(wrong / "tokenizer.json")).encode("Hi").ids
    doc = json.loads((wrong / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    by_id = {v: k for k, v in vocab.items()}
    vocab[by_id[hi]], vocab[by_id[hi + 1]] = hi + 1, hi
    (wrong / "tokenizer.json").write_text(json.dumps(doc))
    done = check(wrong, TEKKEN)
    assert done.returncode == 1
    assert "DIFFERENT: multi-turn" in done.stdout and "equal: unicode" in done.stdout
    assert "5/6 conversations equal" in done.stdout
    done = check(ROOT / "models" / "demo", TEKKEN)
    assert done.returncode == 1 and "not mistral-v7" in done.stdout
