"""The Mistral Small 3 format fixture (models/tiny-v7-tekken) and mistral-common's V7 reference.

The committed folder keeps tokenizer.json xz-compressed; ``tekken_model_dir`` unpacks a copy
into a folder onnxruntime-genai can load. ``reference_tokenizer`` is mistral-common's V7 Tekken
instruct tokenizer over the Tekken file its wheel ships, the same file the fixture's
tokenizer.json was converted from (scripts/make_tekken_model.py, through
``edge-agent bundle build --from-hf``).
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
from pathlib import Path
from typing import Any

import mistral_common

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "models" / "tiny-v7-tekken"
# What made the fixture (scripts/v7_checkpoint.py FIXTURE_SOURCES): the model-making script,
# the shared checkpoint code and the recipe `bundle build --from-hf` runs (and its graph edit).
SOURCES = (
    ROOT / "scripts" / "make_tekken_model.py",
    ROOT / "scripts" / "v7_checkpoint.py",
    ROOT / "edge_agent" / "bundles" / "_recipe.py",
    ROOT / "edge_agent" / "bundles" / "_last_logits.py",
)
TEKKEN = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"


def tekken_model_dir(into: Path) -> Path:
    """A loadable copy of the fixture under ``into``."""
    out = into / "tiny-v7-tekken"
    if not (out / "tokenizer.json").is_file():
        shutil.copytree(FIXTURE, out, dirs_exist_ok=True)
        raw = lzma.decompress((out / "tokenizer.json.xz").read_bytes())
        (out / "tokenizer.json").write_bytes(raw)
        (out / "tokenizer.json.xz").unlink()
    return out


def script_digest() -> str:
    """As scripts/make_tekken_model.py records it in the fixture's SOURCES.md."""
    return hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()


def reference_tokenizer() -> Any:
    from mistral_common.protocol.instruct.normalize import get_normalizer
    from mistral_common.protocol.instruct.validator import ValidationMode, get_validator
    from mistral_common.tokens.tokenizers.base import TokenizerVersion
    from mistral_common.tokens.tokenizers.instruct import InstructTokenizerV7
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    tekken = Tekkenizer.from_file(str(TEKKEN))
    return MistralTokenizer(
        InstructTokenizerV7(tekken),
        validator=get_validator(TokenizerVersion.v7, ValidationMode.test),
        request_normalizer=get_normalizer(TokenizerVersion.v7, None),
    )
