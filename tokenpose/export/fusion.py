"""Graph rewrites for ONNX Runtime's CPU provider, applied when a CPU session is created.

The exported artifacts stay standard ONNX (TensorRT, Triton and other runtimes read the same file);
these rewrites run in memory on the way into an ONNX Runtime CPU session (`OnnxEngine`), and the
manifest records which ones an artifact was verified with (`onnxruntime` field).

* `fuse_attention`: each self-attention block as exported (qkv Linear -> Reshape (B, S, 3, heads,
  head_dim) -> Transpose -> Gather q/k/v -> scalar Muls -> MatMul -> Softmax -> MatMul -> Transpose
  -> Reshape (B, S, dim)), in either form the exporter writes (scale on q only, or sqrt(scale) on q
  and on k^T as `scaled_dot_product_attention` exports), becomes Split + `com.microsoft`
  `MultiHeadAttention` with the same scale. The last layer, where only the keypoint tokens query
  (`TokenPose.forward`: q projected from their rows -> Reshape (B, J, heads, head_dim) ->
  Transpose, k and v from one Linear -> Reshape (B, S, 2, heads, head_dim) -> Transpose -> Gather),
  becomes Split (k, v) + the same op with the shorter query. ONNX Runtime's CPU kernel computes
  it in tiles, never storing the (B, heads, S, S) probabilities: for S-v2 (S = 785) those are
  19.7 MB per image and layer, the reason per-image throughput fell with the batch size. Softmax
  stays float32.

* `split_matmul`: a MatMul whose product only feeds a Split along its last axis (the qkv projection
  before the fused attention: 576 columns cut into q, k, v) becomes one MatMul per part with the
  weight's columns cut the same way (a float initializer, or int8 through a per-tensor or
  per-column DequantizeLinear): the same sums in the same order, bit-identical output, and the
  Split's copy of the (B, S, 3 * dim) product is gone (S-v2: 1.3% of a call at batch 8).

* `quantized_relu`: in a Q/DQ model, Conv -> QuantizeLinear -> DequantizeLinear -> Relu ->
  QuantizeLinear whose zero point is the lowest code (uint8 0) becomes Conv -> QuantizeLinear: that
  Q's saturation at zero is the ReLU, and the Conv's own Q/DQ pair goes. ONNX Runtime fused the
  ReLU away but kept that pair as a float requantization between two QLinearConvs (a
  DequantizeLinear and a QuantizeLinear over every feature map: 4% of the S-v2 INT8 model's kernel
  time at batch 8; B's HRNet INT8 model runs 12% faster without its 72 pairs). One rounding
  instead of two: closer to float32, not bit-identical, so the export's INT8-vs-FP32 check runs
  with it. The file keeps the ReLU (the GPU model is derived from it with symmetric int8 ranges,
  where a Q cannot stand in for the ReLU).

ONNX Runtime's own level-2 fusions (GELU, LayerNorm, MatMul + Add, Q/DQ into QLinearConv /
QLinearMatMul / MatMulIntegerToFloat) still run when the session is created.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FUSIONS", "apply_fusions", "fold_quantized_relus", "fuse_attention", "split_matmuls"]

_MS_DOMAIN = "com.microsoft"


class _Graph:
    """Producer/consumer maps and constant values of one `onnx.GraphProto`."""

    def __init__(self, graph, nodes: list) -> None:
        from onnx import numpy_helper

        self.producer = {o: n for n in nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}
        self.const = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for n in nodes:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def only_consumer(self, tensor: str):
        """The single node reading `tensor`, or None when it has several readers or is a graph output."""
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def scalar(self, name: str) -> float | None:
        value = self.const.get(name)
        return float(value.reshape(())) if value is not None and value.size == 1 else None


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass
class _Attention:
    qkv: str  # (B, S, 3 * dim) tensor the block starts from, or (B, S, 2 * dim) k | v when `query` is set
    out: str  # (B, S, dim) tensor it ends in (B, L, dim with `query`)
    heads: int
    head_dim: int
    scale: float
    nodes: list  # every node the fused op replaces
    query: str | None = None  # (B, L, dim) queries projected on their own (the pruned last layer)


def _strip_scalar_muls(g: _Graph, tensor: str, nodes: list) -> tuple[str, float]:
    """Walk up through Mul/Div by a scalar constant: (the unscaled tensor, the product of the scales)."""
    scale = 1.0
    node = g.producer.get(tensor)
    while node is not None and node.op_type in ("Mul", "Div") and g.only_consumer(node.output[0]) is not None:
        consts = [g.scalar(i) for i in node.input]
        if consts[1] is not None:
            value, tensor = consts[1], node.input[0]
        elif consts[0] is not None and node.op_type == "Mul":
            value, tensor = consts[0], node.input[1]
        else:
            break
        scale = scale / value if node.op_type == "Div" else scale * value
        nodes.append(node)
        node = g.producer.get(tensor)
    return tensor, scale


def _split_source(g: _Graph, tensor: str, index: int):
    """The Transpose (perm 2,0,3,1,4) whose `index`-th slice (Gather axis 0) `tensor` is, or None."""
    gather = g.producer.get(tensor)
    if gather is None or gather.op_type != "Gather" or _attr(gather, "axis", 0) != 0:
        return None
    idx = g.const.get(gather.input[1])
    if idx is None or idx.size != 1 or int(idx.reshape(())) != index:
        return None
    transpose = g.producer.get(gather.input[0])
    if transpose is None or transpose.op_type != "Transpose" or list(_attr(transpose, "perm", [])) != [2, 0, 3, 1, 4]:
        return None
    return gather, transpose


def _own_query(g: _Graph, tensor: str):
    """(Reshape, Transpose) when `tensor` is q projected on its own: Transpose (0, 2, 1, 3) of a
    Reshape to (B, L, heads, head_dim), each read only by the next step; else None."""
    transpose = g.producer.get(tensor)
    if transpose is None or transpose.op_type != "Transpose" or list(_attr(transpose, "perm", [])) != [0, 2, 1, 3]:
        return None
    reshape = g.producer.get(transpose.input[0])
    shape = None if reshape is None or reshape.op_type != "Reshape" else g.const.get(reshape.input[1])
    if (shape is None or shape.shape != (4,) or g.only_consumer(reshape.output[0]) is None
            or g.only_consumer(transpose.output[0]) is None):
        return None
    return reshape, transpose


def _sources(g: _Graph, q: str, k: str, v: str):
    """How q, k, v come from the projections: (Reshape, Transpose, Gathers, extra nodes, query) or None.

    Packed: all three slices of one (B, S, 3, heads, head_dim) transpose (query None). Own query:
    k and v slices 0 and 1 of a (B, S, 2, heads, head_dim) transpose, q from `_own_query`.
    """
    own = _own_query(g, q)
    names = (k, v) if own else (q, k, v)
    sources = [_split_source(g, t, i) for i, t in enumerate(names)]
    if any(s is None for s in sources) or len({id(s[1]) for s in sources}) != 1:
        return None
    transpose = sources[0][1]
    reshape = g.producer.get(transpose.input[0])
    shape = None if reshape is None or reshape.op_type != "Reshape" else g.const.get(reshape.input[1])
    if shape is None or shape.shape != (5,) or int(shape[2]) != len(names):
        return None
    if len(g.consumers.get(transpose.output[0], [])) != len(names) or g.only_consumer(reshape.output[0]) is None:
        return None
    if own is not None:
        q_shape = g.const[own[0].input[1]]
        if tuple(int(d) for d in q_shape[2:]) != (int(shape[3]), int(shape[4])):
            return None
        return reshape, transpose, [s[0] for s in sources], list(own), own[0].input[0]
    return reshape, transpose, [s[0] for s in sources], [], None


def _match_attention(g: _Graph, softmax) -> _Attention | None:
    """The attention block around `softmax`, or None when the pattern differs anywhere."""
    if _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    nodes = [softmax]
    logits, scale = _strip_scalar_muls(g, softmax.input[0], nodes)
    qk = g.producer.get(logits)
    pv = g.only_consumer(softmax.output[0])
    if qk is None or qk.op_type != "MatMul" or pv is None or pv.op_type != "MatMul" or pv.input[0] != softmax.output[0]:
        return None
    q, q_scale = _strip_scalar_muls(g, qk.input[0], nodes)
    kt, k_scale = _strip_scalar_muls(g, qk.input[1], nodes)
    k_transpose = g.producer.get(kt)
    if (k_transpose is None or k_transpose.op_type != "Transpose"
            or list(_attr(k_transpose, "perm", [])) != [0, 1, 3, 2]):
        return None
    found = _sources(g, q, k_transpose.input[0], pv.input[1])
    if found is None:
        return None
    reshape, transpose, gathers, extra, query = found
    shape = g.const[reshape.input[1]]
    out_t = g.only_consumer(pv.output[0])
    out_r = None if out_t is None else g.only_consumer(out_t.output[0])
    if (out_t is None or out_t.op_type != "Transpose" or list(_attr(out_t, "perm", [])) != [0, 2, 1, 3]
            or out_r is None or out_r.op_type != "Reshape"):
        return None
    nodes += [qk, k_transpose, pv, out_t, out_r, reshape, transpose, *gathers, *extra]
    return _Attention(reshape.input[0], out_r.output[0], int(shape[3]), int(shape[4]),
                      scale * q_scale * k_scale, nodes, query)


def fuse_attention(proto) -> tuple[object, int]:
    """Copy of `proto` with every matching attention block as `com.microsoft.MultiHeadAttention`.

    Returns (model, number of blocks fused); blocks that do not match the pattern exactly are left
    as they are. The scale is the product of every scalar Mul/Div on q, k^T and the logits.
    """
    import onnx
    from onnx import helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    # One list of node objects throughout: protobuf may hand out a new wrapper per access.
    nodes = list(graph.node)
    g = _Graph(graph, nodes)
    blocks = [b for b in (_match_attention(g, n) for n in nodes if n.op_type == "Softmax") if b is not None]
    if not blocks:
        return proto, 0
    position = {id(n): i for i, n in enumerate(nodes)}
    removed = {id(n) for b in blocks for n in b.nodes}
    replaced: dict[int, list] = {}
    for k, b in enumerate(blocks):
        prefix = f"/fused_attention_{k}"
        parts = 2 if b.query is not None else 3
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([b.heads * b.head_dim] * parts, np.int64),
                                                              f"{prefix}/split_sizes"))
        q, kk, v = (f"{prefix}/{x}" for x in "qkv")
        split_out = [kk, v] if b.query is not None else [q, kk, v]
        # Every replaced node is an ancestor of the block's output Reshape, so that Reshape is the
        # last of them in the (topological) node order: the inputs are all computed by then.
        last = max(b.nodes, key=lambda n: position[id(n)])
        replaced[id(last)] = [
            helper.make_node("Split", [b.qkv, f"{prefix}/split_sizes"], split_out, name=f"{prefix}/Split", axis=-1),
            helper.make_node("MultiHeadAttention", [b.query or q, kk, v], [b.out], name=f"{prefix}/MultiHeadAttention",
                             domain=_MS_DOMAIN, num_heads=b.heads, scale=float(b.scale)),
        ]
    _rebuilt(graph, nodes, replaced, removed)
    if not any(o.domain == _MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
    return proto, len(blocks)


def _rebuilt(graph, nodes: list, replaced: dict[int, list], removed: set[int]) -> None:
    """Write `nodes` back into `graph` with `replaced[id(node)]` in place of a node and `removed` left out."""
    import onnx

    kept = []
    for n in nodes:
        if id(n) in replaced:
            kept += replaced[id(n)]
        elif id(n) not in removed:
            kept.append(onnx.NodeProto.FromString(n.SerializeToString()))
    del graph.node[:]
    graph.node.extend(kept)


def _split_weight(g: _Graph, matmul, initializers: set[str]):
    """(weight initializer name, its DequantizeLinear or None, per-column quantization) of a MatMul
    whose second input is a 2-D constant read by it alone, else None."""
    weight, dq = matmul.input[1], None
    if weight not in initializers:
        dq = g.producer.get(weight)
        if (dq is None or dq.op_type != "DequantizeLinear" or g.only_consumer(weight) is None
                or any(i not in initializers for i in dq.input if i)):
            return None
        weight = dq.input[0]
    if g.const[weight].ndim != 2 or g.only_consumer(weight) is None:
        return None
    params = [g.const[i] for i in (dq.input[1:] if dq is not None else []) if i]
    per_column = any(p.size > 1 for p in params)
    if per_column and (_attr(dq, "axis", 1) != 1 or any(p.size != g.const[weight].shape[1] for p in params)):
        return None
    return weight, dq, per_column


def split_matmuls(proto) -> tuple[object, int]:
    """Copy of `proto` where each MatMul -> Split (last axis) on a constant weight is one MatMul per part.

    Returns (model, number of MatMuls split). Only a MatMul read by the Split alone is rewritten, and
    only when the split sizes add up to the weight's columns; anything else is left as it is.
    """
    import onnx
    from onnx import helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    nodes = list(graph.node)
    g = _Graph(graph, nodes)
    initializers = {i.name for i in graph.initializer}
    replaced: dict[int, list] = {}
    removed: set[int] = set()
    cut_whole: set[str] = set()
    for split in nodes:
        matmul = g.producer.get(split.input[0]) if split.op_type == "Split" else None
        sizes = g.const.get(split.input[1]) if matmul is not None and len(split.input) > 1 else None
        found = _split_weight(g, matmul, initializers) if matmul is not None and matmul.op_type == "MatMul" else None
        if found is None or sizes is None or g.only_consumer(matmul.output[0]) is None:
            continue
        weight, dq, per_column = found
        w = g.const[weight]
        if _attr(split, "axis", 0) != -1 or int(sizes.sum()) != w.shape[1]:
            continue
        parts, start = [], 0
        for j, (size, out) in enumerate(zip(sizes.tolist(), split.output)):
            cut = lambda name, a, j=j: _add_initializer(graph, f"{name}/part{j}", a)
            part = cut(weight, w[:, start:start + size])
            if dq is not None:
                params = [cut(i, g.const[i][start:start + size]) if per_column and i else i for i in dq.input[1:]]
                axis = {"axis": 1} if per_column else {}
                parts.append(helper.make_node("DequantizeLinear", [part, *params], [f"{dq.output[0]}/part{j}"],
                                              name=f"{dq.name or dq.output[0]}/part{j}", **axis))
                part = parts[-1].output[0]
            parts.append(helper.make_node("MatMul", [matmul.input[0], part], [out],
                                          name=f"{matmul.name or matmul.output[0]}/part{j}"))
            start += size
        replaced[id(split)] = parts
        removed |= {id(matmul)} | ({id(dq)} if dq is not None else set())
        cut_whole.update([weight, split.input[1], *(dq.input[1:] if per_column else [])])
    if replaced:
        _rebuilt(graph, nodes, replaced, removed)
        # The whole weights (per-column scales, split sizes) now unread: dropped, not kept beside the parts.
        read = {i for n in graph.node for i in n.input}
        kept = [i for i in graph.initializer if i.name not in cut_whole or i.name in read]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return proto, len(replaced)


def _add_initializer(graph, name: str, array: np.ndarray) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name


def fold_quantized_relus(proto) -> tuple[object, int]:
    """Copy of `proto` where X -> Q -> DQ -> Relu -> Q' (Q' zero point at the type's lowest code)
    reads X directly: Q' clips at zero as the ReLU did. Returns (model, number of ReLUs folded).

    Each link must be the only reader of the one before it; anything else is left as it is.
    """
    import onnx

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    nodes = list(graph.node)
    g = _Graph(graph, nodes)
    lowest = {np.dtype(np.uint8): 0, np.dtype(np.int8): -128}
    removed: set[int] = set()
    for relu in nodes:
        dq = g.producer.get(relu.input[0]) if relu.op_type == "Relu" else None
        q = g.producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        after = g.only_consumer(relu.output[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if (after is None or after.op_type != "QuantizeLinear" or len(after.input) < 3
                or g.only_consumer(dq.output[0]) is None or g.only_consumer(q.output[0]) is None
                or g.only_consumer(q.input[0]) is None):
            continue
        zero = g.const.get(after.input[2])
        if zero is None or zero.dtype not in lowest or not np.all(zero == lowest[zero.dtype]):
            continue
        after.input[0] = q.input[0]
        removed |= {id(q), id(dq), id(relu)}
    if removed:
        _rebuilt(graph, nodes, {}, removed)
    return proto, len(removed) // 3


# Each rewrite by the name manifests record; FUSIONS, their order, is the order they are applied in.
_REWRITES = {"attention": fuse_attention, "split_matmul": split_matmuls, "quantized_relu": fold_quantized_relus}
FUSIONS = tuple(_REWRITES)


def apply_fusions(proto, fusions: tuple[str, ...] | list[str] = FUSIONS) -> tuple[object, dict[str, int]]:
    """Apply the named rewrites (a subset of `FUSIONS`) in order: (model, {fusion: count})."""
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown:
        raise ValueError(f"unknown graph fusion(s) {', '.join(map(repr, unknown))}; known: {', '.join(FUSIONS)}")
    counts = {}
    for name in fusions:
        proto, counts[name] = _REWRITES[name](proto)
    return proto, counts
