"""Prefill runs the last layer's MLP and the LM head for the last prompt position only: a
graph edit at build time.

The builder's graph runs the LM head (131072 × 5120 for Mistral Small 3), and the last
layer's MLP, at every prompt position, though a prefill uses only the last position's logits:
~80 % of a 2-layer copy's prefill, ~5 % of the 40-layer model's. The builder's own
``prune_lm_head`` makes ``logits`` ``[batch, 1, vocab]``, which onnxruntime-genai's static
Engine cannot take: it binds a ``[batch, max_new_tokens, vocab]`` output and reads each row
at its last scheduled token (rows are right-padded with ``pad_token_id``). So this edit keeps
that output shape and fills it without the work:

    last[b]  = the last position of row b whose input id is not the pad id (0 if none)
    r, a     = GatherElements of the last layer's residual and attention output at last
    head     = post-attention norm, MLP, final norm, LM head on r, a  # [batch, 1, vocab]
    logits   = zeros[batch, seq, 1] + head          # every position holds the row's last

(The KV cache is written by the attention before the gather, for every position. A graph
without the builder's layout gathers just before the LM head.)

Whoever reads a row at its last real token (the Engine, a Generator, chunked prefill, prefix
reuse) gets the same logits as before; the other positions are copies of it, not their own
(nothing in the daemon reads them; speculative decoding or per-position scoring would need
the plain graph). The broadcast is a copy of the row into every position (its output pages
are written once, as the LM head's were). Only the graph file changes; the weights stay in
their external data file. Needs the ``onnx`` package (the build extra), imported when called.
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

    model, edited = _load(graph_path)
    if edited:
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
    p = PREFIX

    made: set[str] = set()

    def const(value: int | list[int], dtype: int = TensorProto.INT64) -> str:
        """An initializer: a scalar for an int, a vector for a list; one per value."""
        values = value if isinstance(value, list) else [value]
        dims = [len(values)] if isinstance(value, list) else []
        name = f"{p}c{dtype}_{'_'.join(map(str, values))}{'v' if dims else ''}"
        if name not in made:
            made.add(name)
            graph.initializer.append(helper.make_tensor(name, dtype, dims, values))
        return name

    def node(op: str, name: str, inputs: list[str], **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [p + name], name=p + name, **attrs))
        return p + name

    nodes: list[onnx.NodeProto] = []
    ids_shape = node("Shape", "ids_shape", [input_ids])
    seq = node(
        "Squeeze",
        "seq",
        [node("Slice", "seq_1d", [ids_shape, const([1]), const([2])])],
    )
    positions = node("Range", "positions", [const(0), seq, const(1)])
    pad = const(pad_id, id_type)
    real = node("Not", "real", [node("Equal", "is_pad", [input_ids, pad])])
    candidates = node("Where", "candidates", [real, positions, const(-1)])
    last = node("ReduceMax", "last", [candidates, const([1])], keepdims=1)
    last = node("Max", "last_or_0", [last, const(0)])
    index_3d = node("Unsqueeze", "index_3d", [last, const([2])])
    # Where the positions part: before the last layer's post-attention norm when the graph
    # has the builder's layout (its MLP then runs on one position a row, as the LM head),
    # else just before the LM head.
    post = _last_post_attention_norm(graph, head)
    target = post if post is not None else head
    slots = (0, 1) if post is not None else (0,)
    for slot in slots:
        data = target.input[slot]
        shape = node("Shape", f"shape_{slot}", [data])
        batch = node("Slice", f"batch_{slot}", [shape, const([0]), const([1])])
        width = node("Slice", f"width_{slot}", [shape, const([2]), const([3])])
        rows = node("Concat", f"rows_{slot}", [batch, const([1]), width], axis=0)
        index = node("Expand", f"index_{slot}", [index_3d, rows])
        target.input[slot] = node("GatherElements", f"gather_{slot}", [data, index], axis=1)
    head_out = p + "logits_last"
    head.output[list(head.output).index(logits)] = head_out
    at = list(graph.node).index(target)
    for offset, new in enumerate(nodes):
        graph.node.insert(at + offset, new)
    # [batch, seq, vocab] by a broadcast Add onto zeros [batch, seq, 1]: onnxruntime's CPU
    # Add broadcasts a row at copy speed; its Expand took 1.6x as long alone and a third of
    # a 2-layer copy's prefill in place (scripts/profile_prefill.py).
    outputs = [o for o in graph.output if o.name == logits]
    dtype = outputs[0].type.tensor_type.elem_type if outputs else TensorProto.FLOAT
    zero = helper.make_tensor(p + "zero_value", dtype, [1], [0])
    graph.node.extend(
        [
            helper.make_node(
                "Concat",
                [ids_shape, const([1])],
                [p + "zeros_shape"],
                axis=0,
                name=p + "zeros_shape",
            ),
            helper.make_node(
                "ConstantOfShape",
                [p + "zeros_shape"],
                [p + "zeros"],
                value=zero,
                name=p + "zeros",
            ),
            helper.make_node("Add", [p + "zeros", head_out], [logits], name=p + "out"),
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

    model, edited = _load(graph_path)
    if not edited:
        return False
    graph = model.graph
    added = [n for n in graph.node if n.name.startswith(PREFIX)]
    # Each gather's output goes back to its data input; the LM head writes the output again.
    back = {n.output[0]: n.input[0] for n in added if n.op_type == "GatherElements"}
    out = next(n for n in added if n.name == PREFIX + "out")
    back[PREFIX + "logits_last"] = out.output[0]
    kept = [n for n in graph.node if not n.name.startswith(PREFIX)]
    for n in kept:
        for i, name in enumerate(n.input):
            n.input[i] = back.get(name, name)
        for i, name in enumerate(n.output):
            n.output[i] = back.get(name, name)
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


def _load(graph_path: Path) -> tuple[Any, bool]:
    """The graph without its weights, and whether it carries the edit."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    return model, any(p.key == MARKER for p in model.metadata_props)


def _last_post_attention_norm(graph: Any, head: Any) -> Any:
    """The last layer's post-attention SkipSimplifiedLayerNormalization when its output
    reaches the LM head only through that layer's MLP and the final norm (the builder's
    layout), else None."""
    nodes = list(graph.node)
    norms = [
        n
        for n in nodes[: nodes.index(head)]
        if n.op_type == "SkipSimplifiedLayerNormalization" and "post_attention" in n.name
    ]
    if not norms or len(norms[-1].input) < 2:
        return None
    post = norms[-1]
    # Nothing after it may read the tensors it takes, other than itself: they keep every
    # position, what follows it will not.
    after = nodes[nodes.index(post) + 1 :]
    if any(set(post.input[:2]) & set(n.input) for n in after):
        return None
    return post
