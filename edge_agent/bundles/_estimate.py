"""Memory figures of an int4 ONNX GenAI export of a Llama/Mistral-style decoder, from config.json.

Stdlib only: the daemon's venv runs it (``edge-agent bundle estimate --config CONFIG``) and so
does the recipe (``bundle build --from-hf`` refuses a build machine with too little RAM before
the builder starts). Checked against the demo model's real export by tests/model; the table in
models/mistral-small-3/README.md is its output (``--markdown``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BUILD_BYTES_PER_PARAM", "BYTES_PER_KV_ELEMENT", "estimate", "estimate_table"]

BYTES_PER_KV_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
# The builder's peak anonymous memory per parameter: every weight materialised in fp32 before
# quantisation (measured: 15.3 GB for the 2-layer real shape of Mistral Small 3, 2.45B params).
BUILD_BYTES_PER_PARAM = 6.2


def estimate(hf_config: dict[str, Any], ep: str = "cpu", block_size: int = 32) -> dict[str, Any]:
    """Bytes of an int4 ONNX GenAI export of a Llama/Mistral-style decoder, from config.json.

    Mirrors what the builder emits: MatMulNBits (symmetric, so no zero points) holds K/2 bytes
    per output row plus one scale per block in the I/O dtype (fp32 on CPU, fp16 on GPU EPs);
    the embedding is int4 only with op_types_to_quantize=MatMul/Gather, else dense in I/O dtype;
    RMSNorm weights and the rotary cos/sin caches are dense.
    """
    cfg = hf_config.get("text_config", hf_config)
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head = cfg.get("head_dim") or hidden // heads
    vocab, context = cfg["vocab_size"], cfg["max_position_embeddings"]
    io_bytes = 4 if ep == "cpu" else 2

    def nbits(k: int, n: int) -> int:
        blocks = -(-k // block_size)
        return n * blocks * (block_size // 2 + io_bytes)

    per_layer = (
        nbits(hidden, heads * head)
        + 2 * nbits(hidden, kv_heads * head)
        + nbits(heads * head, hidden)
        + 2 * nbits(hidden, inter)
        + nbits(inter, hidden)
    )
    dense = (2 * layers + 1) * hidden * io_bytes + 2 * context * (head // 2) * io_bytes
    lm_head = nbits(hidden, vocab)
    embed_int4, embed_dense = nbits(hidden, vocab), vocab * hidden * io_bytes
    params = layers * (
        hidden * heads * head * 2 + 2 * hidden * kv_heads * head + 3 * hidden * inter + 2 * hidden
    )
    params += vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2) + hidden
    kv_elems = 2 * layers * kv_heads * head
    return {
        "execution_provider": ep,
        "block_size": block_size,
        "parameters": params,
        "context_length": context,
        "num_layers": layers,
        "num_kv_heads": kv_heads,
        "head_size": head,
        "hidden_size": hidden,
        "vocab_size": vocab,
        "weights_bytes_embedding_int4": layers * per_layer + lm_head + embed_int4 + dense,
        "weights_bytes_embedding_dense": layers * per_layer + lm_head + embed_dense + dense,
        "build_peak_bytes": int(params * BUILD_BYTES_PER_PARAM),
        "kv_bytes_per_token": {k: kv_elems * v for k, v in BYTES_PER_KV_ELEMENT.items()},
        "kv_bytes_per_1k_tokens": {k: 1024 * kv_elems * v for k, v in BYTES_PER_KV_ELEMENT.items()},
        "kv_bytes_full_context": {
            k: context * kv_elems * v for k, v in BYTES_PER_KV_ELEMENT.items()
        },
    }


def estimate_table(hf_config: dict[str, Any]) -> str:
    """Markdown table of estimate() for the recipe docs (GiB = 2**30 bytes)."""

    def gib(n: int) -> str:
        return f"{n / 2**30:.2f} GiB"

    rows = ["| figure | value |", "| --- | --- |"]
    for ep in ("cpu", "cuda"):
        est = estimate(hf_config, ep)
        for emb in ("int4", "dense"):
            value = gib(est[f"weights_bytes_embedding_{emb}"])
            rows.append(f"| int4 weights, {ep} (embedding {emb}) | {value} |")
    est = estimate(hf_config)
    rows.append(f"| parameters | {est['parameters']:,} |")
    build = f"{est['build_peak_bytes'] / 1e9:.0f} GB"
    rows.append(f"| builder peak RAM on the build machine (~6.2 bytes/parameter) | {build} |")
    rows.append(f"| context length | {est['context_length']:,} tokens |")
    for dtype in ("fp32", "fp16", "int8"):
        per_1k = f"{est['kv_bytes_per_1k_tokens'][dtype] / 2**20:.0f} MiB"
        full = gib(est["kv_bytes_full_context"][dtype])
        rows.append(f"| KV cache {dtype}: per 1k tokens, full context | {per_1k}, {full} |")
    return "\n".join(rows)
