"""Make models/tiny-v7-tekken, the Mistral Small 3 format fixture CI runs the daemon on.

Runs offline in the build venv (``pip install -e '.[build]'``):

    .venv-build/bin/python scripts/make_tekken_model.py --out models/tiny-v7-tekken

Every format fact of Mistral Small 3 (131072-token Tekken vocabulary, head_dim different from
hidden/heads, grouped KV heads, untied embeddings) at a committable size (a few MB), made by
the operator's own command, ``edge-agent bundle build --from-hf CHECKPOINT --context 1024``
(scripts/v7_checkpoint.py). Two edits follow, for the tests: ``bundle.json`` is dropped (tests
build their own bundles; its timestamp would make rebuilds differ), and ``model.context_length``
goes back to the trained 32768 above ``search.max_length`` 1024, so tests prove the daemon
serves the smaller of the two. tokenizer.json is stored xz-compressed (``tokenizer.json.xz``,
1.8 MB instead of 17 MB); ``tests/model/tekken_fixture.py`` unpacks it.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import tempfile
import time
from pathlib import Path

from v7_checkpoint import (
    TEKKEN_FILE,
    bundle_build_command,
    make_checkpoint,
    real_config,
    run,
    sources_digest,
)

# Tiny, but every format fact of the real model kept: head_dim 16 != 32 / 4, GQA 4:2, untied.
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
MAX_LENGTH = 1024  # KV preallocated per sequence


def build(out: Path, seed: int) -> None:
    config = {**real_config(), **TINY}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="make-tekken-") as tmp_s:
        hf_dir, bundle = Path(tmp_s) / "hf", Path(tmp_s) / "bundle"
        print(f"[1/3] checkpoint: MistralForCausalLM, seed {seed}, tekken.json only")
        params = make_checkpoint(config, hf_dir, seed)
        print(f"  {params} parameters")
        print("[2/3] edge-agent bundle build --from-hf (the whole recipe)")
        run(bundle_build_command(hf_dir, bundle, "tiny-v7-tekken", MAX_LENGTH))
        print(f"[3/3] into {out}: no bundle.json, context_length as trained, tokenizer.json.xz")
        (bundle / "bundle.json").unlink()
        genai_path = bundle / "genai_config.json"
        genai = json.loads(genai_path.read_text())
        genai["model"]["context_length"] = config["max_position_embeddings"]
        genai_path.write_text(json.dumps(genai, indent=4, sort_keys=True) + "\n")
        raw = (bundle / "tokenizer.json").read_bytes()
        (bundle / "tokenizer.json.xz").write_bytes(lzma.compress(raw, preset=9))
        (bundle / "tokenizer.json").unlink()
        (bundle / "SOURCES.md").write_text(
            SOURCES.format(seed=seed, params=params, tekken=TEKKEN_FILE, digest=sources_digest())
        )
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(bundle, out)
    print(f"done in {time.monotonic() - started:.0f} s: {out}")
    for path in sorted(out.iterdir()):
        print(f"  {path.name:24s} {path.stat().st_size:>10d}")


SOURCES = f"""# Mistral Small 3 format, tiny shape: sources and licences

Made by `scripts/make_tekken_model.py` (sources sha256 `{{digest}}`: that script,
`scripts/v7_checkpoint.py` and `edge_agent/bundles/_recipe.py`): a seeded random checkpoint
({{params}} parameters, seed {{seed}}, 2 layers; the output is noise) shipping only `tekken.json`,
exported by `edge-agent bundle build --from-hf CHECKPOINT --ep cpu --context {MAX_LENGTH}`.
Then `bundle.json` dropped and `model.context_length` put back to the trained 32768 (tests
prove the daemon serves `search.max_length`, the smaller). The architecture facts come from
`models/mistral-small-3/config.json` (Mistral-Small-24B-Instruct-2501) with hidden 32, MLP 64,
4 query / 2 KV heads of 16.

- Tokenizer: `{{tekken}}` shipped inside the mistral-common wheel (Apache-2.0), converted by the
  recipe with transformers' `convert_tekken_tokenizer` (Apache-2.0). 131072 tokens, the first
  1000 control tokens (`<s>`=1, `</s>`=2, `[INST]`=3, `[/INST]`=4, `[SYSTEM_PROMPT]`=17 ...).
- Chat template: mistral-common's `generate_chat_template(spm=False, tokenizer_version=v7)`,
  added by the recipe (the checkpoint has none).
- Export: onnxruntime-genai's model builder (MIT), int4 CPU, block 32, embedding quantized;
  `search.max_length` = {MAX_LENGTH} (KV preallocated per sequence).
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    build(args.out, args.seed)


if __name__ == "__main__":
    main()
