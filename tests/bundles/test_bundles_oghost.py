"""The activation path against a real onnxruntime-genai model (the committed demo model).

``OgHost`` is the test's stand-in for the lead's engine supervisor: it really loads the slot
folder with og.Model and generates a few tokens, in-process, in a worker thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from bundle_fixtures import Fleet, demo_model_dir, make_folder, small_config

from edge_agent.bundles import BundleManager
from edge_agent.errors import EdgeAgentError, EngineUnavailable

DEMO = demo_model_dir()
pytestmark = pytest.mark.skipif(DEMO is None, reason="models/demo has not landed yet")


def _smoke(model: Any) -> int:
    import numpy as np
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(tokenizer.encode("Hello"), dtype=np.int32))
    produced = 0
    while not gen.is_done() and produced < 4:
        gen.generate_next_token()
        produced += 1
    return produced


def _load(model_dir: Path) -> Any:
    import onnxruntime_genai as og

    try:
        model = og.Model(str(model_dir))
        if _smoke(model) == 0:
            raise EngineUnavailable("smoke generation produced no token")
    except EdgeAgentError:
        raise
    except Exception as exc:  # og raises plain RuntimeError/OSError
        raise EngineUnavailable("the model failed to load or to generate") from exc
    return model


class OgHost:
    def __init__(self) -> None:
        self.active: Any = None
        self.active_dir: Path | None = None

    async def trial_load(self, model_dir: Path) -> None:
        await asyncio.to_thread(_load, model_dir)  # a fresh load, dropped afterwards

    async def switch_to(self, model_dir: Path) -> None:
        self.active = await asyncio.to_thread(_load, model_dir)
        self.active_dir = model_dir

    async def health_probe(self) -> None:
        if self.active is None:
            raise EngineUnavailable("no active model")
        if await asyncio.to_thread(_smoke, self.active) == 0:
            raise EngineUnavailable("no token")


async def test_real_model_activates_and_a_broken_signed_one_is_refused(tmp_path: Path) -> None:
    assert DEMO is not None
    fleet = Fleet(tmp_path / "fleet")
    host = OgHost()
    m = BundleManager(small_config(max_bundle_bytes=2 * 1024**3, max_file_bytes=2 * 1024**3),
                      state_dir=tmp_path / "state", host=host)  # fmt: skip
    fleet.trust(m.trust.path, "ops1")
    m.recover()
    good = fleet.sign(make_folder(tmp_path / "good", 1, model_src=DEMO), "ops1")
    result = await m.install_archive(fleet.archive(good))
    assert result.outcome == "activated"
    assert host.active_dir == m.store.slot_dir("a")
    # Correctly signed, but the weights are garbage: the trial load must catch it.
    broken = make_folder(tmp_path / "broken", 2, model_src=DEMO)
    (broken / "model.onnx").write_bytes(b"\x08\x07" + b"not a graph" * 100)
    fleet.sign(broken, "ops1")
    with pytest.raises(EdgeAgentError, match="trial load of demo failed: the model failed"):
        await m.install_archive(fleet.archive(broken))
    assert [(b.release, b.active) for b in m.list_bundles()] == [(1, True)]
    assert host.active_dir == m.store.slot_dir("a")
    await host.health_probe()
