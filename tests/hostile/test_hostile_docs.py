"""THREAT_MODEL.md and RELIABILITY.md cite tests as proofs: every citation must exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# `folder/test_file.py::test_name`, or `::test_name` continuing the previous file.
_CITE = re.compile(r"`(?:([a-z_]+/test_[a-z_]+\.py))?::(test_[a-z0-9_]+)(?:\[[^\]]*\])?`")


@pytest.mark.parametrize("doc", ["THREAT_MODEL.md", "RELIABILITY.md"])
def test_every_cited_test_exists(doc: str) -> None:
    text = (ROOT / "docs" / doc).read_text()
    current: str | None = None
    cited = 0
    for match in _CITE.finditer(text):
        current = match.group(1) or current
        assert current is not None, f"{doc}: {match.group(0)} names no file"
        source = (ROOT / "tests" / current).read_text()
        name = match.group(2)
        assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{doc}: {current}::{name}"
        cited += 1
    assert cited >= (40 if doc == "THREAT_MODEL.md" else 4)
