"""scripts/profile_prefill.py on the real-format fixture: onnxruntime's own run profiles,
grouped by operator, with the int4 matmuls' FLOPs from the profile's shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_import import load_script
from tekken_fixture import tekken_model_dir

pp = load_script("profile_prefill")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tekken_model_dir(tmp_path_factory.mktemp("profile"))


def test_prefill_and_decode_runs_are_profiled_by_projection(model: Path) -> None:
    tokens = 48
    runs = pp.profile_model(model, tokens, 4, seed=3)
    prefill, steps = runs[0], runs[1:]
    # The first step samples the prefill's logits; each later one runs the model once.
    assert len(steps) == 3
    config = json.loads((model / "genai_config.json").read_text())["model"]
    hidden, vocab = config["decoder"]["hidden_size"], config["vocab_size"]
    groups = prefill.groups
    assert {"MatMulNBits lm_head", "MatMulNBits o", "GroupQueryAttention"} <= set(groups)
    # The recipe's graph runs the last layer's MLP and the LM head for the last prompt
    # position only (its edit, edge_agent/bundles/_last_logits.py): the LM head one row,
    # 2 · hidden · vocab FLOPs; the MLP every position in the other layers and one in the
    # last; the attention's projections every position in every layer.
    layers = config["decoder"]["num_hidden_layers"]
    head = groups["MatMulNBits lm_head"]
    assert (head.calls, head.rows, head.flops) == (1, 1, 2.0 * hidden * vocab)
    assert groups["MatMulNBits o"].rows == tokens * layers
    assert groups["MatMulNBits down"].rows == tokens * (layers - 1) + 1
    # Two layers: each per-layer projection ran twice; a decode step reads one position.
    assert groups["MatMulNBits o"].calls == config["decoder"]["num_hidden_layers"]
    assert steps[0].groups["MatMulNBits lm_head"].flops == 2.0 * hidden * vocab
    assert 0 < prefill.kernel_ms <= prefill.wall_ms * 1.05
    text = pp.render(model, tokens, prefill, steps[0])
    assert text.startswith(pp.HEAD) and "| MatMulNBits lm_head |" in text
    assert f"ran on 1 of the {tokens} prompt positions" in text


def test_parse_keeps_each_kernel_in_its_own_run() -> None:
    def node(name: str, ts: int, op: str) -> dict[str, object]:
        return {
            "cat": "Node",
            "name": f"{name}_kernel_time",
            "ts": ts,
            "dur": 1000,
            "args": {"op_name": op},
        }

    profile = [
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 5000},
        node("/model/layers.0/mlp/down_proj/MatMul", 200, "MatMulNBits"),
        node("/model/layers.0/attn/GroupQueryAttention", 1300, "GroupQueryAttention"),
        {"cat": "Session", "name": "model_run", "ts": 9000, "dur": 2000},
        node("/lm_head/MatMul", 9100, "MatMulNBits"),
        node("/outside", 20000, "Add"),
    ]
    first, second = pp.parse(profile)
    assert set(first.groups) == {"MatMulNBits down", "GroupQueryAttention"}
    assert set(second.groups) == {"MatMulNBits lm_head"}
    assert (first.wall_ms, second.kernel_ms) == (5.0, 1.0)
