"""Prefill computes the LM head for the last prompt position only: a graph edit at build time.

The builder's graph runs the LM head (131072 × 5120 for Mistral Small 3) at every prompt
position, though a prefill uses only the last position's logits: 36 % of a 2-layer copy's
prefill, ~3 % of the 40-layer model's. The builder's own ``prune_lm_head`` makes ``logits``
``[batch, 1, vocab]``, which onnxruntime-genai's static Engine cannot take: it binds a
``[batch, max_new_tokens, vocab]`` output and reads each row at its last scheduled token
(rows are right-padded with ``pad_token_id``). So this edit keeps that output shape and
fills it without the work:

    last[b]  = the last position of row b whose input id is not the pad id (0 if none)
    h_last   = GatherElements(h, last)             # [batch, 1, hidden]
    head     = LM head(h_last)                     # [batch, 1, vocab]
    logits   = Expand(head, [batch, seq, vocab])   # every position holds the row's last

Whoever reads a row at its last real token (the Engine, a Generator, chunked prefill, prefix
reuse) gets the same logits as before; the other positions are copies of it, not their own
(nothing in the daemon reads them; speculative decoding or per-position scoring would need
the plain graph). The ``Expand`` is a copy, ~5 ms for a 128-token chunk, against the LM
head's ~0.3 s on this shape. Only the graph file changes; the weights stay in their external
data file. Needs the ``onnx`` package (the build extra), imported when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_agent.errors import BundleError

MARKER = "edge_agent.last_position_logits"
PREFIX = "/edge_agent/last_position/"  # the names of every node and constant the edit adds


def prune_to_last_position(graph_path: Path, logits: str, input_ids: str, pad_id: int) -> bool:
    """Edit ``graph_path`` in place; False when it is already edited."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(graph_path), load_external_data=False)
    if any(p.key == MARKER for p in model.metadata_props):
        return False
    graph = model.graph
    heads = [n for n in graph.node if logits in n.output]
    if len(heads) != 1 or len(heads[0].input) < 1:
        raise BundleError(f"{graph_path.name}: no single node makes {logits!r}")
    head = heads[0]
    ids = [i for i in graph.input if i.name == input_ids]
    if not ids:
        raise BundleError(f"{graph_path.name}: no graph input {input_ids!r}")
    id_type = ids[0].type.tensor_type.elem_type
    hidden = head.input[0]
    p = PREFIX

    def const(name: str, values: list[int], dtype: int = TensorProto.INT64) -> str:
        graph.initializer.append(helper.make_tensor(p + name, dtype, [len(values)], values))
        return p + name

    def scalar(name: str, value: int, dtype: int = TensorProto.INT64) -> str:
        graph.initializer.append(helper.make_tensor(p + name, dtype, [], [value]))
        return p + name

    def node(op: str, name: str, inputs: list[str], **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [p + name], name=p + name, **attrs))
        return p + name

    nodes: list[onnx.NodeProto] = []
    ids_shape = node("Shape", "ids_shape", [input_ids])
    seq = node(
        "Squeeze",
        "seq",
        [node("Slice", "seq_1d", [ids_shape, const("one", [1]), const("two", [2])])],
    )
    positions = node("Range", "positions", [scalar("zero", 0), seq, scalar("step", 1)])
    real = node(
        "Not", "real", [node("Equal", "is_pad", [input_ids, scalar("pad", pad_id, id_type)])]
    )
    candidates = node("Where", "candidates", [real, positions, scalar("minus_one", -1)])
    last = node("ReduceMax", "last", [candidates, const("axis_1", [1])], keepdims=1)
    last = node("Max", "last_or_0", [last, scalar("zero_max", 0)])
    index = node("Unsqueeze", "index_3d", [last, const("axis_2", [2])])
    h_shape = node("Shape", "hidden_shape", [hidden])
    batch = node("Slice", "batch_1d", [h_shape, const("zero_1d", [0]), const("one_end", [1])])
    width = node("Slice", "hidden_1d", [h_shape, const("two_start", [2]), const("three", [3])])
    gather_shape = node("Concat", "gather_shape", [batch, const("one_len", [1]), width], axis=0)
    index = node("Expand", "index", [index, gather_shape])
    picked = node("GatherElements", "hidden_last", [hidden, index], axis=1)
    head_out = p + "logits_last"
    head.input[0] = picked
    head.output[list(head.output).index(logits)] = head_out
    at = list(graph.node).index(head)
    for offset, new in enumerate(nodes):
        graph.node.insert(at + offset, new)
    vocab = helper.make_node(
        "Slice",
        [p + "head_shape", const("two_v", [2]), const("three_v", [3])],
        [p + "vocab_1d"],
        name=p + "vocab_1d",
    )
    graph.node.extend(
        [
            helper.make_node("Shape", [head_out], [p + "head_shape"], name=p + "head_shape"),
            vocab,
            helper.make_node(
                "Concat",
                [ids_shape, p + "vocab_1d"],
                [p + "logits_shape"],
                axis=0,
                name=p + "logits_shape",
            ),
            helper.make_node("Expand", [head_out, p + "logits_shape"], [logits], name=p + "out"),
        ]
    )
    onnx.helper.set_model_props(
        model, {**{q.key: q.value for q in model.metadata_props}, MARKER: "1"}
    )
    onnx.save(model, str(graph_path))
    return True


def restore_all_positions(graph_path: Path) -> bool:
    """Undo the edit in place (per-position scoring needs every position's logits); False
    when the graph was not edited."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    if not any(p.key == MARKER for p in model.metadata_props):
        return False
    graph = model.graph
    out = next(n for n in graph.node if n.name == PREFIX + "out")
    head = next(n for n in graph.node if PREFIX + "logits_last" in n.output)
    hidden = next(n for n in graph.node if n.name == PREFIX + "hidden_last").input[0]
    head.input[0] = hidden
    head.output[list(head.output).index(PREFIX + "logits_last")] = out.output[0]
    kept = [n for n in graph.node if not n.name.startswith(PREFIX)]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if not t.name.startswith(PREFIX)]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    props = {q.key: q.value for q in model.metadata_props if q.key != MARKER}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(graph_path))
    return True
