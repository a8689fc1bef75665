"""Reduced-precision ONNX models for TensorRT: FP16 with sensitive ops in FP32, and INT8 Q/DQ.

FP16 (`convert_fp16`): onnxconverter-common's float16 pass with an op block list. Weights and
activations become float16 except in LayerNormalization and Softmax (and, optionally, the final
heatmap projection), which keep float32 with Cast nodes at their boundaries: the mixed-precision
layout NVIDIA recommends for strongly typed TensorRT networks, where precision is read from the
ONNX types. The graph input and output stay float32 (`images`, `heatmaps`), so every engine feeds
and reads the same tensors. ONNX Runtime's CPU provider runs the result: ops without a float16 CPU
kernel are wrapped in float32 Casts by ONNX Runtime itself, so a CPU check measures the float16
rounding of weights and activations between ops, not float16 accumulation inside a GPU matmul.

INT8 (`quantize_int8`): ONNX Runtime's `quantize_static` in QDQ format, calibrated on real person
crops. The CPU layout pairs uint8 activations (asymmetric, per tensor) with per-channel symmetric
int8 weights, the pairing x86 VNNI/AMX kernels take (u8 x s8 dot products); Conv outputs are
quantized too (QLinearConv with the ReLU folded into its output range), MatMul outputs are not,
so ONNX Runtime fuses each weight MatMul into MatMulIntegerToFloat (int8 in, float32 out, straight
into GELU, the residual adds and LayerNorm). The attention matmuls (two activation inputs; the
softmax output would get only 256 levels over [0, 1]) and the heatmap projection stay float32 by
default, and Softmax/LayerNorm are never quantized. `int8_nodes` lists what runs in INT8.

INT8 on FP16 (`int8_on_fp16`): the GPU INT8 model. A strongly typed TensorRT network computes
exactly the ONNX types, so the CPU layout would run LayerNorm, Softmax, the attention matmuls and
the head in FP32 on the GPU. This one takes the same Q/DQ model and puts it on the FP16 base of
`convert_fp16`: INT8 where quantized, float16 elsewhere, LayerNorm/Softmax in float32. TensorRT
takes only symmetric int8 activations: the CPU model's uint8 activation ranges are rewritten as
symmetric int8 ones over the same calibrated range (`symmetric_activations`), so one calibration
serves both.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenpose.export.onnx import ExportError

__all__ = [
    "FP16_KEEP_FP32_OPS",
    "INT8_ACTIVATION_TYPES",
    "INT8_CALIBRATION_METHODS",
    "INT8_FP16_OPSET",
    "Int8Settings",
    "classify_matmuls",
    "convert_fp16",
    "int8_on_fp16",
    "quantize_int8",
    "symmetric_activations",
]

# Ops kept in float32 inside the FP16 model: LayerNorm's mean/variance and softmax's exp/sum
# overflow or lose the small differences that matter in float16.
FP16_KEEP_FP32_OPS: tuple[str, ...] = ("LayerNormalization", "Softmax")
INT8_CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INT8_ACTIVATION_TYPES = ("uint8", "int8")
# QuantizeLinear/DequantizeLinear take float16 scales from opset 19 on.
INT8_FP16_OPSET = 19


def _head_projection_nodes(proto) -> list[str]:
    """Name of the node producing the heatmap logits: the last MatMul/Gemm of the graph."""
    names = [n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
    return names[-1:]


def _patch_embedding_nodes(proto) -> list[str]:
    """Names of the Convs whose output becomes tokens (read by a Reshape/Flatten): the patch embedding."""
    to_tokens = {i for n in proto.graph.node if n.op_type in ("Reshape", "Flatten") for i in n.input[:1]}
    return [n.name for n in proto.graph.node if n.op_type == "Conv" and n.output[0] in to_tokens]


def classify_matmuls(proto) -> dict[str, list[str]]:
    """Split the Conv/MatMul/Gemm nodes of a model into groups by role.

    Returns {"weight": [...], "attention": [...], "head": [...], "patch": [...]}: `weight` have an
    initializer (or Constant) operand, `attention` multiply two activations (Q K^T, softmax V),
    `head` is the final heatmap projection and `patch` the patch embedding (the strided Conv whose
    output becomes the visual tokens); those two are weight nodes listed only in their own group.
    """
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    head = set(_head_projection_nodes(proto))
    patch = set(_patch_embedding_nodes(proto))
    groups: dict[str, list[str]] = {"weight": [], "attention": [], "head": sorted(head), "patch": sorted(patch)}
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm") or n.name in head or n.name in patch:
            continue
        has_const = any(i in consts for i in n.input[:2])
        groups["weight" if has_const else "attention"].append(n.name)
    return groups


def _unshare_initializers(proto):
    """Copy of `proto` where no initializer feeds more than one node input.

    Exporters and onnxslim share one initializer among nodes that need equal constants (every zero
    bias of a freshly initialised model is one tensor; the TorchScript exporter also writes
    `Identity(initializer)` nodes for weights used twice). The float16 converter types such a shared
    tensor once: float32 when a blocked consumer (LayerNormalization) reads it, so a float16 Conv
    or Add beside it gets a float32 operand, which ONNX Runtime rejects. Each use gets its own copy
    (and each Identity of an initializer becomes one).
    """
    import onnx

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inits = {i.name: i for i in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    keep, uses = [], {}

    def copy_of(name: str, new_name: str) -> None:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = new_name
        proto.graph.initializer.append(copy)

    for node in proto.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy_of(node.input[0], node.output[0])
            continue
        for k, name in enumerate(node.input):
            if name in inits:
                uses[name] = uses.get(name, 0) + 1
                if uses[name] > 1:
                    node.input[k] = f"{name}__use{uses[name]}"
                    copy_of(name, node.input[k])
        keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto


def convert_fp16(
    proto,
    *,
    keep_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS,
    keep_head_fp32: bool = False,
    keep_fp32_nodes: Sequence[str] = (),
) -> tuple[object, dict]:
    """FP32 `onnx.ModelProto` -> FP16 model with float32 I/O and the listed ops in float32.

    Returns (model, info); info records the ops and nodes left in float32 for the manifest.
    """
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ExportError(
            "FP16 conversion needs onnxconverter-common: pip install onnxconverter-common"
        ) from None
    proto = _unshare_initializers(proto)
    nodes = list(keep_fp32_nodes) + (_head_projection_nodes(proto) if keep_head_fp32 else [])
    block_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    with warnings.catch_warnings():
        # "the float32 number 1e-9 will be truncated to 1e-7": tiny weights, harmless.
        warnings.simplefilter("ignore")
        out = float16.convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=block_ops, node_block_list=nodes or None,
        )
    present = {n.op_type for n in proto.graph.node}
    info = {
        "tool": _tool_version("onnxconverter-common"),
        "fp32_ops": sorted(op for op in keep_fp32_ops if op in present),
        "fp32_nodes": nodes,
        "io": "float32 input and output, Cast to/from float16 inside",
        "reason": "LayerNorm statistics and softmax lose accuracy in float16 (NVIDIA's mixed-precision advice)",
    }
    return out, info


@dataclass
class Int8Settings:
    """How the INT8 model is calibrated and which nodes stay in float32.

    method: "minmax", "percentile" (99.999th, on histograms) or "entropy"; op_types: the ops that
    get Q/DQ; activations: "uint8" (asymmetric, the x86 kernels' pairing with int8 weights) or
    "int8" (symmetric); quantize_outputs: op types whose outputs are quantized too (Conv: its
    output feeds the next Conv as uint8); quantize_attention: also quantize the two activation x
    activation attention matmuls; quantize_head: also quantize the final heatmap projection;
    exclude_nodes: more nodes kept in float32; batch_size: crops per calibration batch.
    """

    method: str = "minmax"
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    activations: str = "uint8"
    quantize_outputs: tuple[str, ...] = ("Conv",)
    quantize_attention: bool = False
    quantize_head: bool = False
    quantize_patch: bool = False
    exclude_nodes: tuple[str, ...] = ()
    batch_size: int = 8
    percentile: float = 99.999

    def __post_init__(self) -> None:
        if self.method not in INT8_CALIBRATION_METHODS:
            raise ValueError(
                f"INT8 calibration method must be one of {', '.join(INT8_CALIBRATION_METHODS)}, got {self.method!r}"
            )
        if self.activations not in INT8_ACTIVATION_TYPES:
            raise ValueError(
                f"INT8 activations must be one of {', '.join(INT8_ACTIVATION_TYPES)}, got {self.activations!r}"
            )


def _tool_version(dist: str) -> str:
    from importlib import metadata

    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return dist


def _quantize_static(proto, calibration, settings: Int8Settings, excluded: list[str]):
    """ONNX Runtime's `quantize_static` (QDQ, symmetric int8, per-channel weights) on `proto`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration.batches(settings.batch_size))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {"images": batch}

    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[settings.method]
    unsigned = settings.activations == "uint8"
    extra = {
        "ActivationSymmetric": not unsigned, "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": [t for t in settings.op_types if t not in settings.quantize_outputs],
        # ReLU stays a node (ONNX Runtime still folds it into QLinearConv): the GPU model's symmetric
        # int8 ranges cannot stand in for it as an asymmetric uint8 range does.
        "QDQKeepRemovableActivations": True,
    }
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    ort_logger = logging.getLogger("onnxruntime.quantization")
    previous = ort_logger.level
    with tempfile.TemporaryDirectory(prefix="tokenpose-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        ort_logger.setLevel(logging.ERROR)
        # quantize_static warns through the root logger ("consider pre-processing"): mute it here.
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_static(
                    str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(settings.op_types), nodes_to_exclude=excluded,
                    calibrate_method=method, extra_options=extra,
                )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises plain Exceptions from its calibrators
            raise ExportError(f"INT8 quantization failed: {type(exc).__name__}: {exc}") from None
        finally:
            logging.disable(logging.NOTSET)
            ort_logger.setLevel(previous)
        return onnx.load(str(dst))


def quantize_int8(proto, calibration, *, settings: Int8Settings | None = None) -> tuple[object, dict]:
    """FP32 `onnx.ModelProto` -> INT8 Q/DQ model calibrated on `calibration` (a CalibrationSet).

    Symmetric int8 activations, per-channel symmetric int8 weights, QDQ format (explicit
    quantization for TensorRT); every op left unquantized computes in float32 (the CPU layout;
    `int8_on_fp16` makes the GPU one). Returns (model, info); info records the calibration (size,
    method, source) and the nodes left in float32 for the manifest.
    """
    settings = settings or Int8Settings()
    if len(calibration) == 0:
        raise ExportError("INT8 calibration set is empty")
    groups = classify_matmuls(proto)
    excluded = list(settings.exclude_nodes)
    if not settings.quantize_attention:
        excluded += groups["attention"]
    if not settings.quantize_head:
        excluded += groups["head"]
    if not settings.quantize_patch:
        excluded += groups["patch"]
    out = _quantize_static(proto, calibration, settings, excluded)
    quantized = [n for n in groups["weight"] if n not in excluded] + (
        groups["attention"] if settings.quantize_attention else []) + (
        groups["head"] if settings.quantize_head else []) + (groups["patch"] if settings.quantize_patch else [])
    info = {
        "calibration": {
            **calibration.describe(),
            "method": settings.method + (f" ({settings.percentile})" if settings.method == "percentile" else ""),
            "batch_size": settings.batch_size,
            "tool": _tool_version("onnxruntime") + " quantize_static",
        },
        "scheme": (f"QDQ, {'uint8 asymmetric' if settings.activations == 'uint8' else 'int8 symmetric'} "
                   "activations (per tensor), int8 symmetric weights (per channel)"),
        "quantized_op_types": list(settings.op_types),
        "quantized_outputs": [t for t in settings.op_types if t in settings.quantize_outputs],
        "num_quantized_nodes": len(quantized),
        "int8_nodes": quantized,
        "qdq_nodes": _qdq_counts(out),
        "fp32_nodes": sorted(set(excluded)),
        "fp32_reason": {
            "attention": "activation x activation matmuls (Q K^T, softmax V) kept in float32"
            if not settings.quantize_attention else "quantized",
            "head": "final heatmap projection kept in float32" if not settings.quantize_head else "quantized",
            "patch": "patch embedding kept in float32 (its output is every visual token)"
            if not settings.quantize_patch else "quantized",
            "ops": "LayerNormalization, Softmax, GELU and residual adds are never quantized",
        },
    }
    return out, info


def _qdq_counts(proto) -> dict[str, int]:
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for n in proto.graph.node:
        if n.op_type in counts:
            counts[n.op_type] += 1
    return counts


def symmetric_activations(proto):
    """Copy of a Q/DQ model whose uint8 activation Q/DQ pairs become symmetric int8 over the same range.

    A uint8 pair (scale s, zero point z) covers [-z s, (255 - z) s]; the int8 pair gets zero point 0
    and scale max(z, 255 - z) s / 127, so the calibrated range is kept (TensorRT's explicit
    quantization takes only symmetric int8). Weight (initializer) Q/DQ and int8 pairs are unchanged.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inits = {i.name: i for i in proto.graph.initializer}
    done: set[str] = set()
    for n in proto.graph.node:
        if (n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3
                or n.input[1] in done or n.input[2] in done):
            continue
        zp = inits.get(n.input[2])
        if zp is None or zp.data_type != onnx.TensorProto.UINT8 or n.input[1] not in inits:
            continue
        z = numpy_helper.to_array(zp).astype(np.float64)
        scale = numpy_helper.to_array(inits[n.input[1]])
        new_scale = (np.maximum(z, 255.0 - z) * scale / 127.0).astype(scale.dtype)
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(new_scale, n.input[1]))
        zp.CopyFrom(numpy_helper.from_array(np.zeros(z.shape, np.int8), n.input[2]))
        done.update(n.input[1:3])
    return proto


def int8_on_fp16(
    int8_proto,
    *,
    keep_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS,
    keep_head_fp32: bool = False,
) -> tuple[object, dict]:
    """INT8 Q/DQ model of `quantize_int8` -> the same quantization on an FP16 base (the GPU layout).

    The quantized Conv/MatMuls keep their int8 weights and activation scales; every other op
    (attention matmuls, GELU, residual adds, the head unless `keep_head_fp32`) computes in float16
    as in `convert_fp16`, with LayerNormalization and Softmax in float32. The Q/DQ scales become
    float16 (allowed from opset 19, so the model is converted to opset 19), so DequantizeLinear
    yields float16 straight into its Conv/MatMul with no Cast between, the pattern TensorRT fuses
    into INT8 kernels. I/O stays float32. Returns (model, info) with the FP16 conversion's info.
    """
    import onnx
    from onnx import version_converter

    int8_proto = symmetric_activations(int8_proto)
    opset = max(o.version for o in int8_proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset < INT8_FP16_OPSET:
        try:
            int8_proto = version_converter.convert_version(int8_proto, INT8_FP16_OPSET)
        except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError or its C++ errors
            raise ExportError(f"cannot convert the INT8 model to opset {INT8_FP16_OPSET}: {exc}") from None
    out, info = convert_fp16(int8_proto, keep_fp32_ops=keep_fp32_ops, keep_head_fp32=keep_head_fp32)
    inits = {i.name: i.data_type for i in out.graph.initializer}
    wrong = [n.name for n in out.graph.node
             if n.op_type in ("QuantizeLinear", "DequantizeLinear") and inits.get(n.input[1]) != onnx.TensorProto.FLOAT16]
    if wrong:
        raise ExportError(f"{len(wrong)} Q/DQ nodes kept float32 scales in the INT8-on-FP16 model, e.g. {wrong[0]}")
    info["scales"] = f"float16 Q/DQ scales (opset {INT8_FP16_OPSET})"
    return out, info
