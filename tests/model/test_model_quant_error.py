"""scripts/quant_error.py: the parts that decide its figures, without the build extra.

The KL divergence and top-1 agreement against hand-computed values, the option matrix
against the recipe's real CPU options, and the teacher-forced logits through
onnxruntime-genai on the committed Mistral-format fixture (each row is the next-token
distribution at its position: the last one equals what prefilling the whole prompt gives).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
import pytest
from script_import import load_script
from tekken_fixture import tekken_model_dir

from edge_agent.bundles._recipe import OPTIONS

ROOT = Path(__file__).resolve().parents[2]


qe = load_script("quant_error")


def test_kl_matches_the_definition_and_is_asymmetric() -> None:
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    expected_pq = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    expected_qp = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    got = qe.kl_divergence(np.log(p)[None], np.log(q)[None])
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected_pq, rel=1e-12)
    # KL(fp32 || int4), not the reverse: the reference comes first.
    assert qe.kl_divergence(np.log(q)[None], np.log(p)[None])[0] == pytest.approx(expected_qp)
    assert expected_pq != pytest.approx(expected_qp)


def test_kl_is_per_row_shift_invariant_and_stable_for_large_logits() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 1000)) * 30  # sharp, like real logits; exp() would overflow
    test = ref + rng.normal(size=ref.shape)
    kl = qe.kl_divergence(ref, test)
    assert kl.shape == (3,) and np.all(np.isfinite(kl)) and np.all(kl > 0)
    # Softmax ignores a constant per row: the logits' offset is not error.
    shifted = test + np.array([[1e4], [-50.0], [0.0]])
    np.testing.assert_allclose(qe.kl_divergence(ref, shifted), kl, rtol=1e-6)
    assert np.all(qe.kl_divergence(ref, ref) == 0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        qe.kl_divergence(ref, test[:2])


def test_top1_agreement_and_summary() -> None:
    ref = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 9.0], [1.0, 2.0, 0.0]])
    test = np.array([[0.0, 4.0, 1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 9.0], [2.0, 1.0, 0.0]])
    assert qe.top1_agreement(ref, test) == 0.5
    summary = qe.error_summary(ref, test)
    kl = qe.kl_divergence(ref, test)
    assert summary["top1"] == 0.5 and summary["positions"] == 4
    assert summary["kl_mean"] == pytest.approx(float(kl.mean()))
    assert summary["kl_max"] == pytest.approx(float(kl.max())) and summary["kl_max"] > 0
    flat = qe.error_summary(np.zeros((2, 3)), np.zeros((2, 3)))
    assert flat["ref_entropy"] == pytest.approx(math.log(3)) and flat["kl_max"] == 0
    assert summary["ref_entropy"] < math.log(3)


def test_option_matrix_varies_only_block_size_and_accuracy_level() -> None:
    matrix = qe.variants([32, 128], [4, 0])
    assert [v.name for v in matrix] == [
        "fp32",
        "int4-b32-acc4",
        "int4-b32-acc0",
        "int4-b128-acc4",
        "int4-b128-acc0",
    ]
    cpu = OPTIONS["cpu"]
    assert matrix[0].builder_options(cpu) == ()
    for v in matrix[1:]:
        opts = v.builder_options(cpu)
        assert opts[:2] == (f"block_size={v.block_size}", f"accuracy_level={v.accuracy_level}")
        # Everything else the recipe passes (the quantised embedding) is kept, once.
        rest = [o for o in cpu if not o.startswith(("block_size=", "accuracy_level="))]
        assert list(opts[2:]) == rest and "op_types_to_quantize=MatMul/Gather" in opts
        assert len({o.split("=")[0] for o in opts}) == len(opts)
    for bad in (48, 8):
        with pytest.raises(ValueError, match="power of two"):
            qe.variants([bad], [4])


def test_teacher_forced_logits_are_the_next_token_distribution_per_position(
    tmp_path: Path,
) -> None:
    model = og.Model(str(tekken_model_dir(tmp_path)))
    prompts = qe.prompt_ids(model)
    assert len(prompts) == len(qe.PROMPTS) and all(len(p) > 5 for p in prompts)
    assert len({tuple(p) for p in prompts}) == len(prompts)
    ids = prompts[0]
    rows = qe.teacher_forced_logits(model, ids)
    assert rows.shape[0] == len(ids) and rows.shape[1] == 131072
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 8, batch_size=1)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    whole = np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1)
    # The last row is what prefilling the whole prompt predicts; earlier rows differ.
    assert qe.kl_divergence(whole[None], rows[-1:])[0] < 1e-4
    assert qe.kl_divergence(whole[None], rows[:1])[0] > 1e-3
