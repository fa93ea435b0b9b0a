"""One benchmarks file, one section per script: each script rewrites only its own."""

from __future__ import annotations

import statistics
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def cell(values: list[float], fmt: str) -> str:
    """A table cell: the median of ``values`` and their range, e.g. ``1.15 (1.05–1.18)``."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def replace_section(section: str, path: Path = BENCHMARKS) -> None:
    """Put ``section`` (its first line is its ``## `` heading) where the file's section of
    that heading is, up to the next ``## `` heading, or append it; the rest stays as it is."""
    head = section.split("\n", 1)[0]
    if not head.startswith("## "):
        raise ValueError(f"a section starts with its '## ' heading, not {head!r}")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    found = text.find("\n" + head + "\n")
    start = 0 if text.startswith(head + "\n") else (found + 1 if found != -1 else -1)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(head))
        tail = text[end + 1 :] if end != -1 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
