"""The recipe's graph edit on the real-format fixture: prefill runs the LM head for each
row's last prompt position only, and what the Engine and a Generator read is unchanged.

The committed fixture was made by ``edge-agent bundle build --from-hf`` and so carries the
edit; the test undoes it on a copy (``restore_all_positions``) and runs both graphs side by
side in onnxruntime-genai: a Generator's logits, and the static Engine's greedy tokens for a
batch of right-padded prompts of different lengths (the case the builder's own
``prune_lm_head`` breaks).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og
import pytest
from tekken_fixture import tekken_model_dir

from edge_agent.bundles._last_logits import MARKER, prune_to_last_position, restore_all_positions
from edge_agent.bundles._recipe import last_position_logits


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    edited = tekken_model_dir(tmp_path_factory.mktemp("edited"))
    plain = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(edited, plain)
    assert restore_all_positions(plain / "model.onnx")
    return edited, plain


def _model(folder: Path) -> og.Model:
    config = og.Config(str(folder))
    config.clear_providers()
    return og.Model(config)


def _prompt_logits(
    model: og.Model, ids: np.ndarray[Any, np.dtype[np.int32]]
) -> np.ndarray[Any, Any]:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 8, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    logits: np.ndarray[Any, Any] = np.asarray(generator.get_output("logits"))[0]
    return logits


def _engine_tokens(model: og.Model, prompts: list[np.ndarray[Any, Any]], n: int) -> list[list[int]]:
    engine = og.Engine(model)
    buffer = engine.create_event_buffer(64)
    requests = []
    for ids in prompts:
        request = engine.create_request()
        options = og.TurnOptions(request)
        options.set_max_generated_tokens(n)
        options.set_min_generated_tokens(n)
        options.set_temperature(0.0)
        request.begin_turn(ids, options)
        requests.append(request)
    row = {id(r): i for i, r in enumerate(requests)}
    tokens: list[list[int]] = [[] for _ in prompts]
    while engine.has_pending_requests():
        for event in engine.run(buffer):
            assert not event.flags.value & ~3, (event.flags.value, event.error_code)
            if event.flags.value & 1:
                tokens[row[id(event.request)]].append(int(event.token))
    for request in requests:
        request.close()
    return tokens


def test_the_fixture_carries_the_edit_and_it_round_trips(graphs: tuple[Path, Path]) -> None:
    edited, plain = graphs
    import onnx

    def marked(folder: Path) -> bool:
        model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        return any(p.key == MARKER for p in model.metadata_props)

    assert marked(edited) and not marked(plain)
    assert not prune_to_last_position(edited / "model.onnx", "logits", "input_ids", 11)
    again = plain.parent / "again"
    shutil.copytree(plain, again)
    config = json.loads((again / "genai_config.json").read_text())
    assert last_position_logits(again, config)  # the recipe's own step
    assert (again / "model.onnx").read_bytes() == (edited / "model.onnx").read_bytes()


def test_prefill_logits_are_the_last_positions_own(graphs: tuple[Path, Path]) -> None:
    edited, plain = (_model(folder) for folder in graphs)
    ids = np.random.default_rng(4).integers(1000, 131072, 61, dtype=np.int32)
    full, pruned = _prompt_logits(plain, ids), _prompt_logits(edited, ids)
    assert full.shape == pruned.shape == (61, full.shape[-1])
    np.testing.assert_allclose(pruned[-1], full[-1], rtol=0, atol=1e-5)
    # The edit is live: every position holds the last one's logits, where the plain graph's
    # positions differ.
    assert np.array_equal(pruned[0], pruned[-1])
    assert not np.allclose(full[0], full[-1])


def test_engine_batches_of_ragged_prompts_answer_the_same(graphs: tuple[Path, Path]) -> None:
    edited, plain = (_model(folder) for folder in graphs)
    rng = np.random.default_rng(9)
    prompts = [rng.integers(1000, 131072, n, dtype=np.int32) for n in (5, 37, 12, 90)]
    want = _engine_tokens(plain, prompts, 8)
    assert all(len(t) == 8 for t in want)
    assert _engine_tokens(edited, prompts, 8) == want
    # Alone, each prompt answers as in the batch (no row reads another's padding).
    assert [_engine_tokens(edited, [p], 8)[0] for p in prompts] == want
