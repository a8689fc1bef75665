"""ONNX export of a TokenPose model, and the checks every export runs on itself.

* `export_onnx_model`: TorchScript-based `torch.onnx.export(..., dynamo=False, opset_version=17)`
  with a dynamic batch axis, constant folding, input `images` (B, 3, H, W) float32 normalised RGB
  and output `heatmaps` (B, J, h, w). (dynamo=True at opset 17 yields an invalid model, reference §7.)
* `check_graph`: `onnx.checker`, no Einsum/ScatterND, the I/O names and the dynamic batch axis.
* `simplify_graph`: onnxslim when it is installed, kept only when it removes nodes.
* `verify_against_torch`: ONNX Runtime (CPU) against PyTorch on several batch sizes; heatmap max
  abs difference and the keypoint difference (decoded with the `HeatmapCodec`) in heatmap pixels.
* `compare_heatmaps`: the same figures, plus OKS, between any two sets of heatmaps (FP16/INT8 vs FP32).
"""

from __future__ import annotations

import collections
import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from tokenpose.data.heatmaps import HeatmapCodec
from tokenpose.data.transforms import affine_points, get_affine_transforms
from tokenpose.errors import TokenPoseError
from tokenpose.evaluation.oks import oks_pairs
from tokenpose.models.config import ModelConfig

__all__ = [
    "FORBIDDEN_OPS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "INT8_KERNELS",
    "ExportError",
    "HeatmapAgreement",
    "ParityReport",
    "check_graph",
    "compare_heatmaps",
    "export_onnx_model",
    "ort_session",
    "runtime_kernels",
    "simplify_graph",
    "synthetic_inputs",
    "verify_against_torch",
]

INPUT_NAME = "images"
OUTPUT_NAME = "heatmaps"
BATCH_DIM = "batch"
# Einsum (torch.einsum attention) and ScatterND (in-place slice writes) are slow or unsupported
# in TensorRT; the model's forward avoids both and this check keeps it that way.
FORBIDDEN_OPS = ("Einsum", "ScatterND")


class ExportError(TokenPoseError):
    """An export step failed or its output did not pass verification."""


def export_onnx_model(model: torch.nn.Module, *, opset: int = 17, constant_folding: bool = True):
    """Export `model` (eval mode, CPU, float32) to an in-memory `onnx.ModelProto`.

    Input `images` (B, 3, H, W) and output `heatmaps` (B, J, h, w), B dynamic (`batch`).
    Traced with a batch of 2 so no size-1 broadcast gets baked into the graph.
    """
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization is native from 17), got {opset}")
    cfg: ModelConfig = model.config
    model = model.eval().float().cpu()
    dummy = torch.zeros(2, 3, *cfg.input_hw)
    buf = io.BytesIO()
    # The fused CPU attention operator has no ONNX form: the graph is exported with SDPA.
    sdpa = model.using_fused_attention(False) if hasattr(model, "using_fused_attention") else contextlib.nullcontext()
    with sdpa, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about the forward's shape checks
        torch.onnx.export(
            model, (dummy,), buf, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=constant_folding,
        )
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_name = "tokenpose"
    proto.doc_string = f"TokenPose-{cfg.name}: images (B,3,{cfg.input_hw[0]},{cfg.input_hw[1]}) -> heatmaps"
    return proto


def op_counts(proto) -> dict[str, int]:
    """Node count per op type of the main graph."""
    return dict(collections.Counter(n.op_type for n in proto.graph.node).most_common())


def check_graph(proto, *, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME) -> dict[str, int]:
    """Validate an exported model; return its op counts.

    Raises ExportError when `onnx.checker` fails, a forbidden op (Einsum, ScatterND) is present,
    or the input/output are not named `images`/`heatmaps` with a symbolic batch axis.
    """
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the model: {str(exc).splitlines()[0]}") from None
    counts = op_counts(proto)
    bad = [f"{op} x{counts[op]}" for op in FORBIDDEN_OPS if op in counts]
    if bad:
        raise ExportError(f"the graph contains ops TensorRT handles badly: {', '.join(bad)}")
    for kind, values, name in (("input", proto.graph.input, input_name), ("output", proto.graph.output, output_name)):
        found = [v for v in values if v.name == name]
        if not found:
            raise ExportError(f"the graph has no {kind} named {name!r} (has {[v.name for v in values]})")
        dim0 = found[0].type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value") or not dim0.dim_param:
            raise ExportError(f"{kind} {name!r} has a fixed batch dimension; expected a dynamic one")
    return counts


def simplify_graph(proto) -> tuple[object, dict]:
    """Run onnxslim on `proto`; keep the result only when it has fewer nodes.

    Returns (model, info) with info = {tool, applied, nodes_before, nodes_after, reason}.
    Without onnxslim installed the model is returned unchanged and `reason` says so.
    """
    before = len(proto.graph.node)
    info = {"tool": None, "applied": False, "nodes_before": before, "nodes_after": before, "reason": ""}
    try:
        import onnxslim
    except ImportError:
        info["reason"] = "onnxslim is not installed"
        return proto, info
    from importlib import metadata

    info["tool"] = f"onnxslim {metadata.version('onnxslim')}"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slim = onnxslim.slim(proto)
        except Exception as exc:  # noqa: BLE001 - a simplifier bug must not break the export: keep the plain graph
            info["reason"] = f"onnxslim failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return proto, info
    after = len(slim.graph.node)
    if after >= before:
        info["reason"] = "no node removed"
        return proto, info
    info.update(applied=True, nodes_after=after, reason=f"{before} -> {after} nodes")
    return slim, info


def ort_session(model, *, threads: int = 0, optimized_path: str | None = None):
    """An ONNX Runtime CPU session from a path, serialized bytes or an `onnx.ModelProto`.

    optimized_path: where ONNX Runtime saves the graph it actually runs (after its fusions).
    """
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = optimized_path
    try:
        return ort.InferenceSession(
            model if isinstance(model, bytes) else str(model), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ExportError(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0]}") from None


INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QAttention")


def runtime_kernels(model) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime's CPU provider runs for `model` (path, bytes or ModelProto)
    after its own fusions: shows which Q/DQ groups became integer kernels and which stayed float."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="tokenpose-ort-") as tmp:
        saved = f"{tmp}/optimized.onnx"
        ort_session(model, optimized_path=saved)
        return op_counts(onnx.load(saved))


def run_session(session, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """(N, 3, H, W) float32 -> (N, J, h, w) float32 heatmaps, in chunks of `batch_size`."""
    name = session.get_inputs()[0].name
    if batch_size is None or batch_size >= len(images):
        return session.run(None, {name: np.ascontiguousarray(images, dtype=np.float32)})[0]
    return np.concatenate([
        session.run(None, {name: np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)})[0]
        for i in range(0, len(images), batch_size)
    ])


def synthetic_inputs(config: ModelConfig, batch: int, seed: int = 0) -> np.ndarray:
    """(batch, 3, H, W) float32 standard-normal inputs (the scale of normalised images), seeded."""
    return np.random.default_rng(seed).standard_normal((batch, 3, *config.input_hw)).astype(np.float32)


@dataclass
class HeatmapAgreement:
    """How close `test` heatmaps are to `reference` ones.

    max_abs / mean_abs: heatmap value difference; kpt_*_px: distance of decoded keypoints in
    heatmap pixels (x `input_px_per_heatmap_px` for input pixels); oks_*: OKS between the two
    predictions in image space (COCO variants with crop boxes and areas only, else None).
    """

    n: int
    max_abs: float
    mean_abs: float
    kpt_mean_px: float
    kpt_max_px: float
    input_px_per_heatmap_px: float
    oks_mean: float | None = None
    oks_min: float | None = None

    @property
    def kpt_mean_input_px(self) -> float:
        return self.kpt_mean_px * self.input_px_per_heatmap_px

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kpt_mean_input_px"] = self.kpt_mean_input_px
        return d


def compare_heatmaps(
    reference: np.ndarray,
    test: np.ndarray,
    config: ModelConfig,
    *,
    centers: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    areas: np.ndarray | None = None,
) -> HeatmapAgreement:
    """Compare two (N, J, h, w) heatmap batches: value differences and decoded keypoints.

    Keypoints are decoded with the variant's `HeatmapCodec` (argmax + DARK) in heatmap pixels.
    With crop `centers` (N, 2), `scales` (N, 2) and person `areas` (N,) pixels^2, OKS between the
    two predictions is computed in image pixels with the COCO sigmas (all joints count).
    """
    reference = np.asarray(reference, dtype=np.float32)
    test = np.asarray(test, dtype=np.float32)
    if reference.shape != test.shape:
        raise ValueError(f"heatmap shapes differ: {reference.shape} vs {test.shape}")
    codec = HeatmapCodec.from_config(config)
    diff = np.abs(reference - test)
    k_ref, _ = codec.decode(reference)
    k_test, _ = codec.decode(test)
    dist = np.linalg.norm(k_ref - k_test, axis=-1)  # (N, J) heatmap pixels
    out = HeatmapAgreement(
        n=int(reference.shape[0]), max_abs=float(diff.max()), mean_abs=float(diff.mean()),
        kpt_mean_px=float(dist.mean()), kpt_max_px=float(dist.max()),
        input_px_per_heatmap_px=config.input_hw[1] / config.heatmap_hw[1],
    )
    if centers is not None and scales is not None and areas is not None and config.num_joints == 17:
        h, w = config.heatmap_hw
        mats = get_affine_transforms(centers, scales, 0.0, (w, h), inv=True)
        img_ref, img_test = affine_points(k_ref, mats), affine_points(k_test, mats)
        oks = oks_pairs(img_test, img_ref, np.maximum(np.asarray(areas, dtype=np.float64), 1.0))
        out.oks_mean, out.oks_min = float(oks.mean()), float(oks.min())
    return out


@dataclass
class ParityReport:
    """ONNX Runtime vs PyTorch per batch size; `passed` when every max_abs <= tolerance."""

    tolerance: float
    rows: list[dict] = field(default_factory=list)  # {batch, max_abs, mean_abs, kpt_max_px, ...}
    inputs: str = "synthetic"

    @property
    def max_abs(self) -> float:
        return max(r["max_abs"] for r in self.rows)

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.tolerance

    def to_dict(self) -> dict:
        return {"tolerance": self.tolerance, "passed": self.passed, "max_abs": self.max_abs,
                "inputs": self.inputs, "batches": self.rows}


def verify_against_torch(
    model: torch.nn.Module,
    onnx_model,
    *,
    batches: Sequence[int] = (1, 4),
    inputs: np.ndarray | None = None,
    tolerance: float = 1e-4,
    session=None,
) -> ParityReport:
    """Run ONNX Runtime (CPU) and PyTorch on the same inputs for each batch size.

    onnx_model: path, bytes or ModelProto; inputs: (N, 3, H, W) float32 real crops to draw the
    batches from (cycled when N is smaller), else seeded synthetic inputs. Returns a
    ParityReport; it does not raise (the caller decides what a failure means).
    """
    cfg: ModelConfig = model.config
    session = session or ort_session(onnx_model)
    need = max(batches)
    if inputs is None:
        pool, kind = synthetic_inputs(cfg, need), "synthetic"
    else:
        pool, kind = np.resize(inputs, (need, *inputs.shape[1:])).astype(np.float32), "real crops"
    report = ParityReport(tolerance=tolerance, inputs=kind)
    model = model.eval()
    for b in batches:
        x = pool[:b]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = run_session(session, x)
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} at batch {b}")
        agree = compare_heatmaps(ref, got, cfg)
        report.rows.append({"batch": b, **{k: v for k, v in agree.to_dict().items()
                                            if k in ("max_abs", "mean_abs", "kpt_mean_px", "kpt_max_px")}})
    return report
