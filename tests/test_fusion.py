"""`split_matmuls` and `fold_quantized_relus` (tokenpose.export.fusion) on small hand-made graphs in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tokenpose.export.fusion import apply_fusions, fold_quantized_relus, split_matmuls

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 5, 8)).astype(np.float32)
W = RNG.standard_normal((8, 12)).astype(np.float32)


def _model(nodes, initializers, outputs=("a", "b", "c")):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["b", "s", "n"]) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": X})


def _split_graph(weight_nodes=(), weight="w", sizes=(4, 4, 4), axis=-1, extra_reader=False, **inits):
    nodes = [*weight_nodes, helper.make_node("MatMul", ["x", weight], ["y"]),
             helper.make_node("Split", ["y", "sizes"], ["a", "b", "c"], axis=axis)]
    outputs = ("a", "b", "c")
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["y"], ["r"]))
        outputs += ("r",)
    return _model(nodes, {"sizes": np.array(sizes, np.int64), **inits}, outputs)


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_float_weight_is_split_into_one_matmul_per_part_bit_identical():
    model = _split_graph(w=W, sizes=(4, 4, 4))
    split, count = split_matmuls(model)
    assert count == 1 and _ops(split) == ["MatMul", "MatMul", "MatMul"]
    onnx.checker.check_model(split)
    for got, want in zip(_run(split), _run(model)):
        assert got.shape == want.shape and np.array_equal(got, want)
    # Uneven parts and the input model untouched.
    uneven, count = split_matmuls(_split_graph(w=W, sizes=(2, 6, 4)))
    assert count == 1 and _ops(model) == ["MatMul", "Split"]
    assert all(np.array_equal(a, b) for a, b in zip(_run(uneven), _run(_split_graph(w=W, sizes=(2, 6, 4)))))


@pytest.mark.parametrize("per_column", [True, False])
def test_int8_weight_through_dequantize_linear_is_split_with_its_scales(per_column):
    scale = (np.abs(W).max(axis=0) / 127).astype(np.float32) if per_column else np.float32(np.abs(W).max() / 127)
    q = np.clip(np.round(W / scale), -127, 127).astype(np.int8)
    zero = np.zeros(scale.shape, np.int8)
    dq = helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], **({"axis": 1} if per_column else {}))
    model = _split_graph([dq], wq=q, ws=np.asarray(scale, np.float32), wz=zero)
    split, count = split_matmuls(model)
    assert count == 1 and _ops(split) == ["DequantizeLinear", "MatMul"] * 3
    onnx.checker.check_model(split)
    assert all(np.array_equal(a, b) for a, b in zip(_run(split), _run(model)))


@pytest.mark.parametrize("case", ["product read elsewhere", "other axis", "sizes do not cover the weight",
                                  "weight computed"])
def test_graphs_that_differ_from_the_pattern_are_left_alone(case):
    if case == "product read elsewhere":
        model = _split_graph(w=W, extra_reader=True)
    elif case == "other axis":
        model = _split_graph(w=RNG.standard_normal((8, 12)).astype(np.float32), sizes=(1, 2, 2), axis=1)
    elif case == "sizes do not cover the weight":
        model = _model([helper.make_node("MatMul", ["x", "w"], ["y"]),
                        helper.make_node("Split", ["y", "sizes"], ["a", "b"], axis=-1)],
                       {"w": W, "sizes": np.array([4, 4], np.int64)}, ("a", "b"))
    else:
        model = _split_graph([helper.make_node("Relu", ["w0"], ["w"])], w0=W)
    same, count = split_matmuls(model)
    assert count == 0 and _ops(same) == _ops(model)


def test_apply_fusions_runs_the_split_after_the_attention_fusion():
    model = _split_graph(w=W)
    fused, counts = apply_fusions(model)
    assert counts == {"attention": 0, "split_matmul": 1, "quantized_relu": 0} and _ops(fused) == ["MatMul"] * 3
    with pytest.raises(ValueError, match="unknown graph fusion"):
        apply_fusions(model, ["skip_layernorm"])


def test_the_whole_weight_is_dropped_once_split():
    split, _ = split_matmuls(_split_graph(w=W))
    names = {i.name for i in split.graph.initializer}
    assert "w" not in names and {"w/part0", "w/part1", "w/part2"} <= names


def _relu_chain(zero_point: int = 0, extra_reader: bool = False):
    """x -> MatMul -> Q -> DQ -> Relu -> Q (zero point `zero_point`, uint8) -> DQ -> y."""
    s1, s2 = np.float32(0.1), np.float32(0.03)  # the first range (+-12.8) clips nothing here
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "s1", "z1"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "s1", "z1"], ["md"]),
             helper.make_node("Relu", ["md"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s2", "z2"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s2", "z2"], ["a"])]
    outputs = ("a", "r") if extra_reader else ("a",)
    return _model(nodes, {"w": W, "s1": s1, "z1": np.uint8(128), "s2": s2, "z2": np.uint8(zero_point)}, outputs)


def test_a_relu_between_quantize_pairs_becomes_the_clipping_of_the_next_quantize():
    model = _relu_chain()
    folded, count = fold_quantized_relus(model)
    assert count == 1 and _ops(folded) == ["MatMul", "QuantizeLinear", "DequantizeLinear"]
    onnx.checker.check_model(folded)
    got, before = _run(folded)[0], _run(model)[0]
    # Exactly relu(x @ w) quantized once at the second scale; the original rounded twice.
    want = np.clip(np.round(np.maximum(X @ W, 0) / np.float32(0.03)), 0, 255) * np.float32(0.03)
    assert np.abs(got - want).max() < 1e-6 and (got >= 0).all()
    assert np.abs(got - before).max() <= 0.1 / 2 + 0.03 + 1e-6  # the first rounding, then one step


@pytest.mark.parametrize("case", ["zero point not the lowest code", "relu output read elsewhere"])
def test_relus_that_are_not_a_clipping_stay(case):
    model = _relu_chain(zero_point=3) if case.startswith("zero") else _relu_chain(extra_reader=True)
    same, count = fold_quantized_relus(model)
    assert count == 0 and _ops(same) == _ops(model)
