"""Make the small Mistral-architecture demo model (or a bench model) as an ONNX GenAI folder.

Runs offline in the build venv (``pip install -e '.[build]'``: torch, transformers, the builder):

    .venv-build/bin/python scripts/make_demo_model.py --out models/demo
    .venv-build/bin/python scripts/make_demo_model.py --size bench --out .cache/bench-model
    .venv/bin/python scripts/make_demo_model.py --estimate-only --config path/to/config.json

Steps: collect a PSF-licensed corpus from this interpreter's own stdlib (the pydoc topics and
the docstrings of Lib/*.py), train a byte-level BPE tokenizer, train a tiny MistralForCausalLM
for a fixed number of steps with fixed seeds, export it with the onnxruntime-genai model builder
(int4, CPU), then patch genai_config.json and write bundle.json. `--estimate-only` needs no torch:
it computes weight/KV memory figures from a Hugging Face config.json (used for the Mistral Small 3
recipe in models/mistral-small-3/README.md).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import importlib
import json
import math
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.bundles._estimate import BYTES_PER_KV_ELEMENT, estimate, estimate_table

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]  # ids 0..4, as in Mistral's
ROLE_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
# Mistral v1-style template: the system prompt is folded into the first user turn; the reply
# follows "[/INST]" directly, so add_generation_prompt has nothing to add.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{%- set system_message = '' %}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system_message != '' %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}"
    "{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)
# ORT session, genai runtime and arenas beside weights and KV cache: 33 MiB measured on the demo
# model (peak RSS of a load + generate minus weights and one full-context KV), doubled for margin.
RUNTIME_OVERHEAD_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Size:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    context: int
    steps: int  # training steps; 0 keeps the seeded random init
    batch: int
    seq: int
    lr: float


SIZES = {
    "demo": Size(128, 384, 4, 4, 2, 4096, 2048, steps=500, batch=16, seq=128, lr=6e-3),
    # ~120M parameters: for realistic per-token cost in benchmarks only, random weights.
    "bench": Size(768, 2688, 12, 12, 4, 32000, 4096, steps=0, batch=0, seq=0, lr=0.0),
}


# ---------------------------------------------------------------------- corpus


def collect_corpus() -> tuple[list[str], list[tuple[str, str]]]:
    """Documents (pydoc topics, module docstrings) and Q/A pairs (function/class docstrings)."""
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[k].strip() for k in sorted(pydoc_data.topics.topics)]
    pairs: list[tuple[str, str]] = []
    for key in sorted(pydoc_data.topics.topics):
        first = _first_paragraph(pydoc_data.topics.topics[key])
        if first:
            pairs.append((f"Explain {key.replace('-', ' ')} in Python.", first))
    lib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(lib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module_doc = ast.get_docstring(tree)
        if module_doc and len(module_doc) > 40:
            docs.append(module_doc.strip())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) <= 40 or node.name.startswith("_"):
                continue
            first = _first_paragraph(doc)
            if first:
                pairs.append((f"What does {path.stem}.{node.name} do?", first))
    return docs, pairs


def _first_paragraph(text: str) -> str:
    para = text.strip().split("\n\n", 1)[0]
    return " ".join(para.split())[:600]


def render_chat(question: str, answer: str) -> str:
    """Same string CHAT_TEMPLATE renders for one user turn plus the assistant's reply."""
    return f"<s>[INST] {question} [/INST] {answer}</s>"


# ---------------------------------------------------------------------- tokenizer + training


def train_tokenizer(texts: list[str], vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_hf_tokenizer(tok: Any, hf_dir: Path, context: int) -> Any:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **ROLE_TOKENS,
        additional_special_tokens=["[INST]", "[/INST]"],
        model_max_length=context,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(hf_dir)
    return fast


def train_model(size: Size, seed: int, token_ids: list[int], hf_dir: Path, threads: int) -> Any:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    config = MistralConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        head_dim=size.hidden // size.heads,
        max_position_embeddings=size.context,
        sliding_window=None,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    config.architectures = ["MistralForCausalLM"]
    model = MistralForCausalLM(config)
    losses: list[float] = []
    started = time.monotonic()
    if size.steps:
        data = torch.tensor(token_ids, dtype=torch.long)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=size.lr, betas=(0.9, 0.95), weight_decay=0.1)
        warmup = max(1, size.steps // 20)
        model.train()
        for step in range(size.steps):
            lr = size.lr * min(1.0, (step + 1) / warmup)
            lr *= 0.5 * (1 + math.cos(math.pi * step / size.steps)) * 0.9 + 0.1
            for group in opt.param_groups:
                group["lr"] = lr
            starts = torch.randint(0, len(data) - size.seq - 1, (size.batch,), generator=gen)
            batch = torch.stack([data[s : s + size.seq + 1] for s in starts.tolist()])
            # Next-token loss computed here: HF's `labels=` would shift a second time.
            logits = model(input_ids=batch[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if step % 25 == 0 or step == size.steps - 1:
                avg = sum(losses[-50:]) / len(losses[-50:])
                print(f"  step {step:4d}  loss {avg:.3f}  {time.monotonic() - started:6.1f}s")
    model.eval()
    model.generation_config.do_sample = False
    model.save_pretrained(hf_dir, safe_serialization=True)
    final = sum(losses[-50:]) / len(losses[-50:]) if losses else float("nan")
    return model, final, time.monotonic() - started


# ---------------------------------------------------------------------- export + bundle


def export(hf_dir: Path, out: Path, cache: Path) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir)]
    cmd += ["-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(cache), "--extra_options"]
    # Quantize the embedding Gather too: otherwise it stays fp32, the largest tensor here.
    cmd += ["block_size=32", "accuracy_level=4", "op_types_to_quantize=MatMul/Gather"]
    cmd += ["hf_token=false"]
    print("  $ python " + " ".join(cmd[1:]))
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"model builder failed with exit code {done.returncode}")


def patch_genai_config(out: Path, context: int) -> dict[str, Any]:
    path = out / "genai_config.json"
    cfg: dict[str, Any] = json.loads(path.read_text())
    cfg["engine"] = {"static_batching": {"max_batch_size": 16}}
    search = cfg["search"]
    search.update(max_length=context, do_sample=False, num_beams=1, top_k=1, top_p=1.0)
    search.update(temperature=1.0, repetition_penalty=1.0)
    cfg["model"]["context_length"] = context
    path.write_text(json.dumps(cfg, indent=4, sort_keys=True) + "\n")
    return cfg


def kv_element_bytes(model_path: Path) -> int:
    onnx = importlib.import_module("onnx")  # build venv only
    names = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16"}
    names[onnx.TensorProto.BFLOAT16] = "bf16"
    graph = onnx.load(str(model_path), load_external_data=False).graph
    for inp in graph.input:
        if inp.name.startswith("past_key_values."):
            return BYTES_PER_KV_ELEMENT[names[inp.type.tensor_type.elem_type]]
    raise SystemExit("model.onnx has no past_key_values inputs")


def bundle_facts(out: Path, name: str, created_at: str) -> dict[str, Any]:
    cfg = json.loads((out / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    layers, kv_heads, head = dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]
    kv_per_token = 2 * layers * kv_heads * head * kv_element_bytes(out / "model.onnx")
    weights = sum((out / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))
    context = cfg["model"]["context_length"]
    return {
        "format": 1,
        "name": name,
        "version": "0.1.0",
        "release": 1,
        "created_at": created_at,
        "expires_at": None,
        "min_agent_version": "0.1.0",
        "model": {
            "architecture": "MistralForCausalLM",
            "quantization": "int4",
            "execution_providers": ["cpu"],
            "context_length": context,
            "num_layers": layers,
            "num_kv_heads": kv_heads,
            "head_size": head,
            "hidden_size": dec["hidden_size"],
            "vocab_size": cfg["model"]["vocab_size"],
            "kv_bytes_per_token": kv_per_token,
            "weights_bytes": weights,
            # One full-context sequence plus the runtime's own arenas (docs/MODEL.md).
            "memory_estimate_bytes": weights + context * kv_per_token + RUNTIME_OVERHEAD_BYTES,
        },
    }


# ---------------------------------------------------------------------- main


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def finish_tokenizer_files(out: Path) -> None:
    """Keep the chat template inside tokenizer_config.json too, where older readers look."""
    path = out / "tokenizer_config.json"
    tcfg: dict[str, Any] = json.loads(path.read_text())
    tcfg["chat_template"] = CHAT_TEMPLATE
    tcfg["add_bos_token"] = False
    tcfg["add_eos_token"] = False
    path.write_text(json.dumps(tcfg, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def build(args: argparse.Namespace) -> None:
    size = SIZES[args.size]
    if args.steps is not None:
        size = dataclasses.replace(size, steps=args.steps)
    out: Path = args.out
    random.seed(args.seed)
    print(f"[1/5] corpus: pydoc topics + docstrings of {sysconfig.get_paths()['stdlib']}/*.py")
    docs, pairs = collect_corpus()
    chats = [render_chat(q, a) for q, a in pairs]
    digest = hashlib.sha256("\x00".join(docs + chats).encode()).hexdigest()
    chars = sum(map(len, docs)) + sum(map(len, chats))
    print(f"  {len(docs)} documents, {len(pairs)} Q/A pairs, {chars} chars, sha256 {digest[:16]}")
    with tempfile.TemporaryDirectory(prefix="make-demo-") as tmp_s:
        tmp = Path(tmp_s)
        hf_dir, onnx_dir = tmp / "hf", tmp / "onnx"
        print(f"[2/5] tokenizer: byte-level BPE, vocab {size.vocab}")
        tok = train_tokenizer(docs + [a for _, a in pairs], size.vocab)
        fast = save_hf_tokenizer(tok, hf_dir, size.context)
        texts = [f"<s>{d}</s>" for d in docs] + chats
        random.shuffle(texts)
        ids = [i for enc in tok.encode_batch(texts) for i in enc.ids]
        print(f"  {tok.get_vocab_size()} tokens in vocab, {len(ids)} training tokens")
        print(f"[3/5] model: MistralForCausalLM {size}")
        model, loss, secs = train_model(size, args.seed, ids, hf_dir, args.threads)
        nparams = sum(p.numel() for p in model.parameters())
        print(f"  {nparams} parameters, {size.steps} steps in {secs:.1f}s, final loss {loss:.3f}")
        sample = ""
        if size.steps:
            sample = torch_sample(model, fast, "What does json.dumps do?")
            print(f"  torch greedy sample: {sample!r}")
        print("[4/5] export: onnxruntime-genai model builder, int4 CPU")
        export(hf_dir, onnx_dir, tmp / "cache")
        patch_genai_config(onnx_dir, size.context)
        finish_tokenizer_files(onnx_dir)
        print(f"[5/5] bundle.json + SOURCES.md into {out}")
        facts = bundle_facts(onnx_dir, args.name, args.created_at)
        (onnx_dir / "bundle.json").write_text(json.dumps(facts, indent=2) + "\n")
        py = sys.version.split()[0]
        facts_md = dict(name=args.name, py=py, chars=chars, digest=digest, seed=args.seed)
        training = f"trained in {secs:.0f} s; final loss {loss:.3f}"
        if not size.steps:  # bench: only the per-token cost matters
            training = "NOT trained: seeded random weights, output is noise"
        facts_md.update(threads=args.threads, nparams=nparams, training=training, sample=sample)
        text = SOURCES.format(
            **facts_md, steps=size.steps, batch=size.batch, seq=size.seq, lr=size.lr
        )
        (onnx_dir / "SOURCES.md").write_text(text)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(onnx_dir, out)
    print(f"done: {out} ({folder_bytes(out)} bytes)")
    for name in sorted(p.name for p in out.iterdir()):
        print(f"  {name:24s} {(out / name).stat().st_size:>10d}")
    print(json.dumps(facts["model"], indent=2))


def torch_sample(model: Any, fast: Any, question: str) -> str:
    import torch

    ids = fast(render_chat(question, "")[: -len(" </s>")], add_special_tokens=False).input_ids
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False)
    return str(fast.decode(gen[0][len(ids) :], skip_special_tokens=True))


SOURCES = """# {name}: sources and licences

Made by `scripts/make_demo_model.py` (docs/MODEL.md tells how). No third-party weights: the
model was initialised from a fixed seed and trained here; the tokenizer was trained here too.

Training corpus: Python {py}'s own standard library, read from the interpreter that ran the
script: the `pydoc_data.topics` help texts (language reference topics) and the docstrings of
`Lib/*.py` (module docstrings as documents; public function and class docstrings as
`[INST] What does module.name do? [/INST] first paragraph` pairs).
Licence: Python Software Foundation License Version 2 (permissive, GPL-compatible),
https://docs.python.org/3/license.html. The model is a derivative of that text.

- corpus: {chars} characters, sha256 `{digest}` (of the rendered training texts)
- seed {seed}, {steps} steps of batch {batch} x {seq} tokens, lr {lr}, {threads} torch threads
- {nparams} parameters; {training}
- torch greedy sample for `What does json.dumps do?`: {sample!r}

Tools: torch, transformers, tokenizers (BSD-3 / Apache-2.0), onnxruntime-genai's model
builder (MIT).
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output folder (replaced)")
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument(
        "--name", help="bundle name (default edge-demo-mistral / edge-bench-mistral)"
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, help="override the size's training steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (fixed for reruns)")
    now = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    parser.add_argument("--created-at", default=now, help="bundle.json created_at (UTC, ...Z)")
    parser.add_argument("--estimate-only", action="store_true", help="print memory estimates")
    parser.add_argument("--config", type=Path, help="HF config.json for --estimate-only")
    parser.add_argument("--ep", default="cpu", help="execution provider for --estimate-only")
    parser.add_argument("--markdown", action="store_true", help="--estimate-only as a table")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.estimate_only:
        if args.config is None:
            parser.error("--estimate-only needs --config")
        hf_config = json.loads(args.config.read_text())
        table = estimate_table(hf_config) if args.markdown else None
        print(table or json.dumps(estimate(hf_config, args.ep), indent=2))
        return
    if args.out is None:
        parser.error("--out is required")
    if not args.created_at.endswith("Z"):
        parser.error("--created-at must be UTC ISO-8601 ending in Z")
    args.name = args.name or f"edge-{args.size}-mistral"
    build(args)


if __name__ == "__main__":
    main()
