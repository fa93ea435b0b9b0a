"""The committed demo model: loads with onnxruntime-genai, matches bundle.json, chats, generates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og
import pytest
from script_import import load_script

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo"
BUNDLE_KEYS = {
    "format",
    "name",
    "version",
    "release",
    "created_at",
    "expires_at",
    "min_agent_version",
    "model",
}
MODEL_KEYS = {
    "architecture",
    "quantization",
    "execution_providers",
    "context_length",
    "num_layers",
    "num_kv_heads",
    "head_size",
    "hidden_size",
    "vocab_size",
    "kv_bytes_per_token",
    "weights_bytes",
    "memory_estimate_bytes",
}
QUESTION = "What does json.dumps do?"


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEMO / "bundle.json").read_text())
    return data


@pytest.fixture(scope="module")
def genai_config() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEMO / "genai_config.json").read_text())
    return data


@pytest.fixture(scope="module")
def model() -> og.Model:
    return og.Model(str(DEMO))


@pytest.fixture(scope="module")
def tokenizer(model: og.Model) -> og.Tokenizer:
    return og.Tokenizer(model)


def chat_prompt(tokenizer: og.Tokenizer, messages: list[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True))


def generate(
    model: og.Model,
    tokenizer: og.Tokenizer,
    prompt: str,
    max_tokens: int,
    schema: str | None = None,
) -> tuple[list[int], str]:
    """Greedy decode through og.Engine, the API the engine worker uses."""
    engine = og.Engine(model)
    request = engine.create_request()
    options = og.TurnOptions(request)
    options.set_max_generated_tokens(max_tokens)
    if schema is not None:
        options.set_guidance("json_schema", schema)
    request.begin_turn(np.asarray(tokenizer.encode(prompt), dtype=np.int32), options)
    buffer = engine.create_event_buffer(64)
    tokens: list[int] = []
    finish = None
    while engine.has_pending_requests():
        for event in engine.run(buffer):
            assert event.error_code == og.EngineErrorCode.NONE
            if event.flags & og.EngineEventFlags.TOKEN:
                tokens.append(int(event.token))
            if event.finish_reason != og.FinishReason.NONE:
                finish = event.finish_reason
    request.close()
    assert finish is not None
    return tokens, str(tokenizer.decode(np.asarray(tokens, dtype=np.int32)))


def test_demo_bundle_json_has_exact_schema(bundle: dict[str, Any]) -> None:
    assert set(bundle) == BUNDLE_KEYS
    assert set(bundle["model"]) == MODEL_KEYS
    assert bundle["format"] == 1
    assert bundle["name"] == "edge-demo-mistral"
    assert bundle["version"] == "0.1.0"
    assert bundle["min_agent_version"] == "0.1.0"
    assert bundle["release"] == 1
    assert bundle["expires_at"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", bundle["created_at"])
    facts = bundle["model"]
    assert facts["architecture"] == "MistralForCausalLM"
    assert facts["quantization"] == "int4"
    assert facts["execution_providers"] == ["cpu"]
    for key in MODEL_KEYS - {"architecture", "quantization", "execution_providers"}:
        assert type(facts[key]) is int and facts[key] > 0, key


def test_demo_bundle_json_matches_the_real_files(
    bundle: dict[str, Any], genai_config: dict[str, Any]
) -> None:
    facts = bundle["model"]
    decoder = genai_config["model"]["decoder"]
    assert facts["num_layers"] == decoder["num_hidden_layers"] == 4
    assert facts["num_kv_heads"] == decoder["num_key_value_heads"] == 2
    assert decoder["num_attention_heads"] == 4  # GQA: two query heads per KV head
    assert facts["head_size"] == decoder["head_size"]
    assert facts["hidden_size"] == decoder["hidden_size"]
    assert facts["vocab_size"] == genai_config["model"]["vocab_size"]
    assert facts["context_length"] == genai_config["model"]["context_length"]
    weights = sum((DEMO / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))
    assert facts["weights_bytes"] == weights
    # fp32 KV cache on CPU: K and V, 4 bytes per element.
    assert facts["kv_bytes_per_token"] == 2 * 4 * 2 * facts["head_size"] * 4
    floor = weights + facts["context_length"] * facts["kv_bytes_per_token"]
    assert facts["memory_estimate_bytes"] > floor
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total < 8 * 1024 * 1024  # committed to git: keep it small


def test_demo_genai_config_batching_and_search_defaults(genai_config: dict[str, Any]) -> None:
    assert genai_config["engine"] == {"static_batching": {"max_batch_size": 16}}
    search = genai_config["search"]
    assert search["max_length"] == genai_config["model"]["context_length"] == 2048
    assert search["do_sample"] is False
    assert search["num_beams"] == 1
    assert genai_config["model"]["type"] == "mistral"
    assert genai_config["model"]["eos_token_id"] == 2


def test_demo_chat_template_renders_mistral_inst(tokenizer: og.Tokenizer) -> None:
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": QUESTION}])
    assert prompt == f"<s>[INST] {QUESTION} [/INST]"
    with_system = chat_prompt(
        tokenizer,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
    )
    assert with_system == f"<s>[INST] Be brief.\n\n{QUESTION} [/INST]"
    turns = chat_prompt(
        tokenizer,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
    )
    assert turns == "<s>[INST] Hi [/INST] Hello</s>[INST] Bye [/INST]"
    ids = [int(t) for t in tokenizer.encode(prompt)]
    # <s>, [INST] and [/INST] are single special tokens, not spelled out in bytes.
    assert ids[:2] == [1, 3]
    assert ids[-1] == 4
    assert tokenizer.bos_token_id == 1
    assert [int(t) for t in tokenizer.eos_token_ids] == [2]


def test_demo_tokenizer_round_trips_unicode(tokenizer: og.Tokenizer) -> None:
    text = "naïve café — 中文 🙂\n\tend"
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    assert str(tokenizer.decode(ids)) == text


def test_demo_greedy_generation_is_deterministic_english(
    model: og.Model, tokenizer: og.Tokenizer
) -> None:
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": QUESTION}])
    first, text = generate(model, tokenizer, prompt, 20)
    second, again = generate(model, tokenizer, prompt, 20)
    assert first == second
    assert text == again
    assert 1 <= len(first) <= 20
    assert all(ch.isprintable() or ch in "\n\t" for ch in text)
    words = re.findall(r"[A-Za-z]{2,}", text)
    assert len(words) >= 5, text  # trained: words, not punctuation noise
    letters = sum(ch.isascii() and (ch.isalpha() or ch == " ") for ch in text)
    assert letters / len(text) > 0.7, text


def test_demo_json_schema_guidance_yields_schema_valid_json(
    model: og.Model, tokenizer: og.Tokenizer
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["ok", "n"],
        "additionalProperties": False,
        # With flexible whitespace a weak model pads with newlines until max tokens.
        "x-guidance": {"whitespace_flexible": False},
    }
    prompt = chat_prompt(tokenizer, [{"role": "user", "content": "Give me a JSON object."}])
    _, text = generate(model, tokenizer, prompt, 32, json.dumps(schema))
    value = json.loads(text)
    assert set(value) == {"ok", "n"}
    assert isinstance(value["ok"], bool)
    assert type(value["n"]) is int and 0 <= value["n"] <= 99


def test_demo_estimate_matches_the_exported_weights(bundle: dict[str, Any]) -> None:
    from edge_agent.bundles import _estimate as estimator

    size = load_script("make_demo_model").SIZES["demo"]
    hf_config = {
        "hidden_size": size.hidden,
        "intermediate_size": size.intermediate,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "vocab_size": size.vocab,
        "max_position_embeddings": size.context,
    }
    est = estimator.estimate(hf_config, "cpu")
    actual = bundle["model"]["weights_bytes"]
    # The estimate counts tensor bytes; model.onnx adds the graph itself (~1%).
    assert 0.97 < est["weights_bytes_embedding_int4"] / actual < 1.0
    assert est["kv_bytes_per_token"]["fp32"] == bundle["model"]["kv_bytes_per_token"]


def test_mistral_small_3_readme_table_is_computed_not_typed() -> None:
    from edge_agent.bundles import _estimate as estimator

    recipe = ROOT / "models" / "mistral-small-3"
    table = estimator.estimate_table(json.loads((recipe / "config.json").read_text()))
    readme = (recipe / "README.md").read_text()
    block = readme.split("<!-- estimate-table -->\n", 1)[1].split("\n<!-- /estimate-table -->")[0]
    assert block == table
    est = estimator.estimate(json.loads((recipe / "config.json").read_text()))
    assert 23e9 < est["parameters"] < 24.5e9  # "24B"
    assert est["kv_bytes_per_token"]["fp16"] == 2 * 40 * 8 * 128 * 2
