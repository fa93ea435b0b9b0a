"""One context truth: what admission reserves per request is what the engine preallocates.

The static engine allocates KV for ``search.max_length`` tokens per sequence, whatever
``model.context_length`` says (measured on the 24B's real shape: 512 MiB per 2 layers at 32768,
128 MiB at 8192). The Mistral Small 3 case from its config: a CPU box serving the 40-layer
model with max_length lowered to 8192.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pressure_support import Box

from edge_agent.errors import ResourceExhausted
from edge_agent.pressure import (
    AdmissionConfig,
    AdmissionController,
    context_from_genai_config,
    estimate_request_bytes,
    kv_bytes_per_token_from_genai_config,
)

GIB = 1024**3
MS3 = json.loads(
    (Path(__file__).resolve().parents[2] / "models" / "mistral-small-3" / "config.json").read_text()
)


def _genai(context_length: int, max_length: int | None) -> dict[str, object]:
    decoder = {
        "num_hidden_layers": MS3["num_hidden_layers"],
        "num_key_value_heads": MS3["num_key_value_heads"],
        "head_size": MS3["head_dim"],
    }
    config: dict[str, object] = {"model": {"context_length": context_length, "decoder": decoder}}
    if max_length is not None:
        config["search"] = {"max_length": max_length}
    return config


def test_served_context_is_the_smaller_of_the_two_lengths() -> None:
    assert context_from_genai_config(_genai(32768, 8192)) == 8192
    assert context_from_genai_config(_genai(4096, 8192)) == 4096  # past training: never
    assert context_from_genai_config(_genai(32768, None)) == 32768
    bad_configs: list[dict[str, object]] = [_genai(0, 10), _genai(10, 0), {"model": {}}]
    bad_configs.append(_genai(10, True))
    for bad in bad_configs:
        with pytest.raises(ValueError, match=r"context_length|max_length"):
            context_from_genai_config(bad)


async def test_mistral_small_3_with_max_length_8192_is_admitted_on_a_24_gib_box(
    tmp_path: Path,
) -> None:
    # 13.7 GiB of int4 weights loaded (models/mistral-small-3/README.md), a 1 GiB reserve.
    box = Box(tmp_path, total=24 * GIB, available=10 * GIB)
    config = AdmissionConfig(memory_reserve_bytes=1 * GIB)
    admission = AdmissionController(config, max_active=4, snapshot=lambda: box.snapshot)
    genai = _genai(32768, 8192)
    per_token = kv_bytes_per_token_from_genai_config(genai, 4)
    served = context_from_genai_config(genai)
    cost = estimate_request_bytes(per_token, 20, 100, 16 * 1024**2, preallocated_tokens=served)
    assert 2.5 * GIB < cost < 2.6 * GIB  # what the engine allocates per sequence, plus overhead
    tickets = [await admission.acquire(cost_bytes=cost) for _ in range(3)]
    fourth = asyncio.create_task(admission.acquire(cost_bytes=cost))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not fourth.done()  # 9 GiB of room holds three: the fourth waits for one of ours
    tickets.pop().release()
    tickets.append(await asyncio.wait_for(fourth, 1))
    for ticket in tickets:
        ticket.release()
    # Sized from context_length instead (the old rule), every request would be refused, and
    # the refusal carries the caller's hint of what helps.
    whole = estimate_request_bytes(per_token, 20, 100, 16 * 1024**2, preallocated_tokens=32768)
    box_small = Box(tmp_path / "small", total=10 * GIB, available=9 * GIB)
    strict = AdmissionController(config, max_active=4, snapshot=lambda: box_small.snapshot)
    with pytest.raises(ResourceExhausted) as caught:
        await strict.acquire(cost_bytes=whole, shrink_hint="serve a smaller search.max_length")
    assert caught.value.retry_after_ms is None
    assert caught.value.message.endswith("serve a smaller search.max_length")
    assert "lower max_tokens" not in caught.value.message
