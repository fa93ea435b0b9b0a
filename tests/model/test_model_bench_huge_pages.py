"""scripts/bench_huge_pages.py on the real-format fixture: one round, both sides in processes of
their own, the tunable reaching only the "on" side."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_import import load_script
from tekken_fixture import tekken_model_dir

from edge_agent._malloc import huge_page_malloc, huge_page_malloc_applies

hp = load_script("bench_huge_pages")


@pytest.mark.skipif(
    not huge_page_malloc_applies(huge_page_malloc({})),
    reason="needs glibc 2.35+ and transparent huge pages in madvise mode",
)
def test_one_round_side_by_side(tmp_path: Path) -> None:
    model = tekken_model_dir(tmp_path / "v7")
    sizes = (32, 384)
    round_ = {side: hp._side(model, sizes, side == "on") for side in ("off", "on")}
    for side in round_.values():
        assert side["prefill_32"] > 0 and side["prefill_384"] > 0 and side["decode"] > 0
        assert side["rss_after"] > side["rss_load"] > 0
    # The fixture's 384-token prefill in 128-token chunks maps [128, 131072] fp32 logits a
    # chunk: thousands of 4 KiB faults; on huge pages a few hundred at most.
    assert round_["off"]["faults_384"] > 4000
    assert round_["on"]["faults_384"] < round_["off"]["faults_384"] / 4
    table = hp.render(model, sizes, [round_], "now")
    assert "| prefill tok/s, 384 tokens in 128-token chunks |" in table
    assert "| prefill tok/s, 32 tokens whole |" in table
