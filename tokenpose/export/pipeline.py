"""The export pipeline behind `tokenpose-export`: FP32 ONNX, then FP16 / INT8, then engines.

Every artifact is checked before it is written and written atomically with its manifest:

1. FP32: export, `check_graph`, optional onnxslim pass, ONNX Runtime vs PyTorch on batches 1 and
   a larger one (max abs heatmap difference must be <= `tolerance`, 1e-4).
2. Derived precisions, each one convert -> check -> compare -> manifest -> write
   (`_write_derived`): FP16; INT8 (Q/DQ, unquantized ops in FP32: the CPU model); INT8 on FP16
   (the same Q/DQ, unquantized ops in FP16: the GPU model, written when engines are built or on
   request). Compared with ONNX Runtime FP32 on the real crops of the calibration data (synthetic
   inputs when there is none, FP16 only): heatmap and keypoint differences, OKS for COCO variants.
3. Engines: one per precision when TensorRT imports (or a one-line reason why not); the INT8
   engine is built from the GPU INT8 model when there is one.

Files in `out_dir`: `tokenpose_<variant>_<precision>.onnx` / `.engine`, each with `<file>.json`,
`tokenpose_<variant>_int8-fp16.onnx` (GPU INT8), and `tokenpose.timing.cache` shared by the engine
builds. Temp files a killed run left in `out_dir` are removed when the next export starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenpose.export.aoti import aoti_artifact_name, export_aoti
from tokenpose.export.calibration import CalibrationSet, load_calibration_set
from tokenpose.export.fusion import FUSIONS, apply_fusions
from tokenpose.export.onnx import (
    INT8_KERNELS,
    ExportError,
    check_graph,
    compare_heatmaps,
    export_onnx_model,
    ort_session,
    run_session,
    runtime_kernels,
    simplify_graph,
    synthetic_inputs,
    verify_against_torch,
)
from tokenpose.export.precision import (
    INT8_FP16_OPSET,
    Int8Settings,
    convert_fp16,
    int8_on_fp16,
    quantize_int8,
)
from tokenpose.export.tensorrt import build_engine, tensorrt_unavailable_reason
from tokenpose.export.triton import write_triton_model
from tokenpose.files import NotWritableError, atomic_write, remove_stale_temp_files
from tokenpose.files import ensure_writable_dir as _ensure_writable_dir
from tokenpose.manifest import (
    BatchRange,
    Manifest,
    read_manifest,
    sha256_file,
    write_manifest,
)
from tokenpose.models import create_model
from tokenpose.models.config import ModelConfig, get_config

__all__ = [
    "RANDOM_WEIGHTS_NOTE",
    "ExportOptions",
    "ExportSummary",
    "ExportedArtifact",
    "artifact_name",
    "ensure_writable_dir",
    "export_model",
]

RANDOM_WEIGHTS_NOTE = (
    "no --checkpoint given: exporting RANDOMLY INITIALISED weights (no official TokenPose weights "
    "exist); the files run but their predictions mean nothing"
)
TIMING_CACHE_NAME = "tokenpose.timing.cache"
FP16_CPU_RUNTIME = "onnxruntime CPU (float16 ops without a CPU kernel run in float32)"


@dataclass
class ExportOptions:
    """What to export. Sizes come from the variant; batch is the engine profile (min:opt:max).

    int8_gpu: also write the GPU INT8 model (`..._int8-fp16.onnx`, Q/DQ on the FP16 model);
    None: exactly when engines are built (the INT8 engine is then built from it).
    """

    variant: str
    out_dir: Path = Path("engines")
    checkpoint: Path | None = None
    fp16: bool = False
    int8: bool = False
    calib_data: Path | None = None
    calib_size: int = 64
    opset: int = 17
    batch: BatchRange = field(default_factory=BatchRange)
    engine: bool | None = None  # None: build engines when tensorrt imports
    simplify: bool = True
    verify_batches: tuple[int, ...] = (1, 4)
    tolerance: float = 1e-4
    fp16_keep_head_fp32: bool = False
    int8_settings: Int8Settings = field(default_factory=Int8Settings)
    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # default: out_dir / tokenpose.timing.cache
    aoti: bool = False  # also an AOTInductor package (.pt2) for libtorch / the C++ example
    # its attention: None the fused CPU operator where it runs (library beside the package), False SDPA
    aoti_fused_attention: bool | None = None
    int8_gpu: bool | None = None
    tf32: bool = False  # let the FP32 layers of TensorRT engines use TF32 (off: "fp32" means FP32)
    triton: bool = False  # also a Triton model repository under out_dir/triton


@dataclass
class ExportedArtifact:
    path: Path
    manifest: Path
    format: str
    precision: str
    report: dict


@dataclass
class ExportSummary:
    artifacts: list[ExportedArtifact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    engine_skipped: str | None = None


def artifact_name(variant: str, precision: str, suffix: str = ".onnx") -> str:
    return f"tokenpose_{variant}_{precision}{suffix}"


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove a file can be created in it; ExportError otherwise."""
    try:
        return _ensure_writable_dir(path)
    except NotWritableError as exc:
        raise ExportError(str(exc)) from None


def _set_metadata(proto, manifest: Manifest) -> None:
    del proto.metadata_props[:]
    for key, value in manifest.metadata_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _write_onnx(proto, manifest: Manifest, path: Path) -> ExportedArtifact:
    """Embed the manifest in metadata_props, write the model and its manifest atomically."""
    manifest.artifact = path.name
    _set_metadata(proto, manifest)
    data = proto.SerializeToString()
    with atomic_write(path, "wb") as f:
        f.write(data)
    mpath = write_manifest(manifest, path)
    return ExportedArtifact(path, mpath, "onnx", manifest.precision, manifest.verification or {})


def _checked_batch(options: ExportOptions) -> BatchRange:
    """The batch range, after the checks that need no file: ValueError naming the option."""
    batch = options.batch
    if not isinstance(batch, BatchRange):
        batch = BatchRange.parse(str(batch))
    if options.opset < 17:
        raise ValueError(f"--opset must be >= 17 (LayerNormalization is native from 17), got {options.opset}")
    if options.int8 and options.calib_data is None:
        raise ValueError("--int8 needs --calib-data: a folder of person images or a COCO keypoints json")
    if options.int8_gpu and not options.int8:
        raise ValueError("--int8-gpu needs --int8 (it is the INT8 model on the FP16 base)")
    return batch


def export_model(options: ExportOptions, log: Callable[[str], None] = print) -> ExportSummary:
    """Run the whole export; returns what was written. Raises TokenPoseError subclasses / ValueError."""
    cfg = get_config(options.variant)
    batch = _checked_batch(options)
    engine_wanted, engine_reason = _engine_decision(options.engine)
    out_dir = ensure_writable_dir(options.out_dir)
    stale = remove_stale_temp_files(out_dir)
    if stale:
        log(f"removed {len(stale)} temp file(s) a killed run left in {out_dir}")
    summary = ExportSummary()

    calib: CalibrationSet | None = None
    if options.calib_data is not None:
        calib = load_calibration_set(options.calib_data, cfg, max_samples=options.calib_size)
        log(f"calibration data: {len(calib)} real crops from {calib.source}"
            + (f" ({len(calib.skipped)} unreadable files skipped)" if calib.skipped else ""))

    model = create_model(cfg, options.checkpoint)
    if options.checkpoint is None:
        log("warning: " + RANDOM_WEIGHTS_NOTE)
        summary.notes.append(RANDOM_WEIGHTS_NOTE)
    common = {
        "batch": batch.as_dict(), "opset": options.opset, "random_weights": options.checkpoint is None,
        "checkpoint": None if options.checkpoint is None else Path(options.checkpoint).name,
        "checkpoint_sha256": None if options.checkpoint is None else sha256_file(options.checkpoint),
    }
    proto, fp32_session, fp32 = _export_fp32(model, options, calib, out_dir / artifact_name(cfg.name, "fp32"),
                                             common, log)
    summary.artifacts.append(fp32)
    if options.aoti:
        done = export_aoti(
            model, out_dir / aoti_artifact_name(cfg.name), batch=batch, log=log,
            fused_attention=options.aoti_fused_attention,
            manifest_fields={k: common[k] for k in ("random_weights", "checkpoint", "checkpoint_sha256")},
        )
        summary.artifacts.append(ExportedArtifact(done.path, done.manifest, "pt2", "fp32", done.report))

    onnx_models = {"fp32": fp32}
    if options.fp16 or options.int8:
        reference = _Reference.of(fp32_session, cfg, calib)
        int8_gpu = engine_wanted if options.int8_gpu is None else options.int8_gpu
        for derived in _derived_models(proto, options, calib, int8_gpu):
            path = out_dir / artifact_name(cfg.name, derived.name)
            onnx_models[derived.name] = _write_derived(derived, reference, cfg, common, path, log)
            summary.artifacts.append(onnx_models[derived.name])

    if engine_wanted:
        if "int8-fp16" in onnx_models:  # the GPU INT8 model replaces the CPU one as the engine's source
            onnx_models.pop("int8")
        cache = options.timing_cache or out_dir / TIMING_CACHE_NAME
        for onnx_artifact in onnx_models.values():
            summary.artifacts.append(_build_engine_artifact(onnx_artifact, cfg, batch, common, cache, options, log))
    else:
        summary.engine_skipped = engine_reason
        log(f"engine step skipped: {engine_reason}")
    if options.triton:
        _write_triton_repository(summary.artifacts, out_dir / "triton", batch, log)
    return summary


def _write_triton_repository(artifacts: list[ExportedArtifact], repository: Path, batch: BatchRange,
                             log: Callable[[str], None]) -> None:
    """One Triton model per ONNX model and TensorRT engine; preferred batches: the profile's opt and max."""
    for artifact in artifacts:
        if artifact.format in ("onnx", "tensorrt"):
            folder = write_triton_model(artifact.path, read_manifest(artifact.path), repository,
                                        preferred=(batch.opt, batch.max))
            log(f"wrote Triton model {folder}")


def _export_fp32(model, options: ExportOptions, calib: CalibrationSet | None, path: Path, common: dict,
                 log: Callable[[str], None]):
    """Export, check, simplify and verify the FP32 model, then write it: (proto, session, artifact)."""
    proto = export_onnx_model(model, opset=options.opset)
    check_graph(proto)
    simplify_info = {"applied": False, "reason": "disabled (--no-simplify)"}
    if options.simplify:
        proto, simplify_info = simplify_graph(proto)
        check_graph(proto)
        log(f"simplification: {simplify_info['tool'] or 'none'}: {simplify_info['reason']}")
    session = ort_session(proto)
    check = {"batches": options.verify_batches, "tolerance": options.tolerance,
             "inputs": None if calib is None else calib.images}
    parity = verify_against_torch(model, proto, session=session, **check)
    for row in parity.rows:
        log(f"fp32 ONNX Runtime vs PyTorch, batch {row['batch']}: max |heatmap diff| {row['max_abs']:.2e}, "
            f"keypoints max {row['kpt_max_px']:.3f} px (heatmap), mean {row['kpt_mean_px']:.3f} px")
    if not parity.passed:
        raise ExportError(
            f"FP32 ONNX differs from PyTorch by {parity.max_abs:.2e} > {options.tolerance:.0e}; nothing was written"
        )
    # What OnnxEngine runs on the CPU (the in-memory fusions) must pass the same check, or is not used.
    fused, counts = apply_fusions(proto)
    fused_parity = verify_against_torch(model, fused, **check)
    fusions = list(FUSIONS) if fused_parity.passed and any(counts.values()) else []
    log(f"onnxruntime CPU fusions {counts}: vs PyTorch max |heatmap diff| {fused_parity.max_abs:.2e}"
        + ("" if fused_parity.passed else f" > {options.tolerance:.0e}: not used"))
    manifest = Manifest.for_config(
        model.config, artifact=path.name, format="onnx", precision="fp32", **common,
        verification={"onnxruntime_vs_torch": parity.to_dict(), "simplification": simplify_info,
                      "fused_vs_torch": fused_parity.to_dict()},
        onnxruntime=_runtime_record(fusions, counts),
    )
    artifact = _write_onnx(proto, manifest, path)
    log(f"wrote {path}")
    return proto, session, artifact


@dataclass
class _Reference:
    """What every derived precision is compared with: ONNX Runtime FP32 heatmaps (N, J, h, w) of
    `images` (N, 3, H, W), with the crop boxes (centers, scales, areas) when they are real crops."""

    images: np.ndarray
    heatmaps: np.ndarray
    where: str
    boxes: dict

    @classmethod
    def of(cls, fp32_session, cfg: ModelConfig, calib: CalibrationSet | None) -> _Reference:
        if calib is None:
            images, where, boxes = synthetic_inputs(cfg, 8), "8 synthetic inputs (pass --calib-data for real crops)", {}
        else:
            images, where = calib.images, f"{len(calib)} real crops of {Path(calib.source).name}"
            boxes = {"centers": calib.centers, "scales": calib.scales, "areas": calib.areas}
        return cls(images, run_session(fp32_session, images, batch_size=8), where, boxes)


@dataclass
class _Derived:
    """A model derived from the FP32 one. name: file tag and log label; fields: its own manifest
    fields; runtime: what ran the comparison; note: said after the inputs in the log line."""

    name: str
    precision: str
    proto: object
    fields: dict
    runtime: str
    note: str = ""
    fusions: tuple[str, ...] = FUSIONS  # the CPU rewrites OnnxEngine applies (none for GPU models)


def _derived_models(proto, options: ExportOptions, calib: CalibrationSet | None,
                    int8_gpu: bool) -> Iterator[_Derived]:
    """The FP16, INT8 (CPU) and INT8-on-FP16 (GPU) models asked for, converted one at a time."""
    if options.fp16:
        fp16, info = convert_fp16(proto, keep_head_fp32=options.fp16_keep_head_fp32)
        yield _Derived("fp16", "fp16", fp16, {"higher_precision": info}, FP16_CPU_RUNTIME)
    if not options.int8:
        return
    int8, info = quantize_int8(proto, calib, settings=options.int8_settings)
    calibration = info.pop("calibration")
    note = " (the calibration crops themselves)"
    yield _Derived("int8", "int8", int8, {"calibration": calibration, "higher_precision": info, "int8_base": "fp32"},
                   "onnxruntime CPU", note)
    if int8_gpu:
        gpu, fp16_info = int8_on_fp16(int8, keep_head_fp32=options.fp16_keep_head_fp32)
        yield _Derived("int8-fp16", "int8", gpu, {
            "calibration": calibration, "int8_base": "fp16", "opset": INT8_FP16_OPSET,
            "higher_precision": {"int8": info, "fp16": fp16_info},
        }, FP16_CPU_RUNTIME, note, fusions=())


def _write_derived(derived: _Derived, reference: _Reference, cfg: ModelConfig, common: dict, path: Path,
                   log: Callable[[str], None]) -> ExportedArtifact:
    """Check a derived model, compare it with FP32 on the reference inputs, write it and its manifest."""
    check_graph(derived.proto)
    # Compared as OnnxEngine runs it on the CPU: with the fusions its manifest will list.
    runs, counts = apply_fusions(derived.proto, derived.fusions)
    got = run_session(ort_session(runs), reference.images, batch_size=8)
    agree = compare_heatmaps(reference.heatmaps, got, cfg, **reference.boxes)
    log(_agreement_line(derived.name, agree, reference.where + derived.note))
    record = _runtime_record(list(derived.fusions), counts)
    if derived.name == "int8":
        kernels = runtime_kernels(runs)
        record["kernels"] = {op: n for op, n in kernels.items()
                             if op in INT8_KERNELS or op in ("Conv", "MatMul", "FusedMatMul", "MultiHeadAttention")}
        log(f"int8 on onnxruntime CPU: {record['kernels']}")
    manifest = Manifest.for_config(
        cfg, artifact=path.name, format="onnx", precision=derived.precision, **{**common, **derived.fields},
        verification={"vs_fp32": {**agree.to_dict(), "inputs": reference.where, "runtime": derived.runtime}},
        onnxruntime=record,
    )
    artifact = _write_onnx(derived.proto, manifest, path)
    log(f"wrote {path}")
    return artifact


def _runtime_record(fusions: list[str], counts: dict[str, int]) -> dict:
    """The manifest's `onnxruntime` field: how OnnxEngine sets up a CPU session for the artifact."""
    return {"graph_optimization_level": "all", "fusions": fusions, "fused": counts,
            "note": "fusions are applied in memory for the CPU provider (tokenpose.export.fusion); "
                    "the file itself is standard ONNX"}


def _engine_decision(engine: bool | None) -> tuple[bool, str | None]:
    reason = tensorrt_unavailable_reason()
    if engine is False:
        return False, "disabled (--no-engine)"
    if reason is not None:
        if engine:
            raise ExportError(f"--engine was asked for but {reason}")
        return False, reason
    return True, None


def _agreement_line(precision: str, agree, where: str) -> str:
    text = (f"{precision} vs fp32 on {where}: max |heatmap diff| {agree.max_abs:.3e}, keypoint error "
            f"mean {agree.kpt_mean_px:.3f} px / max {agree.kpt_max_px:.3f} px in heatmap pixels "
            f"(x{agree.input_px_per_heatmap_px:g} = {agree.kpt_mean_input_px:.3f} px mean in input pixels)")
    if agree.oks_mean is not None:
        text += f", OKS vs fp32 mean {agree.oks_mean:.4f} (min {agree.oks_min:.4f})"
    return text


def _build_engine_artifact(onnx_artifact: ExportedArtifact, cfg, batch: BatchRange, common: dict,
                           cache: Path, options: ExportOptions, log) -> ExportedArtifact:
    result = build_engine(
        onnx_artifact.path, precision=onnx_artifact.precision, batch=batch, input_hw=cfg.input_hw,
        workspace_bytes=int(options.workspace_gib * (1 << 30)), timing_cache=cache, tf32=options.tf32,
    )
    # Named by precision: the INT8 engine of the GPU INT8 model is `..._int8.engine` too.
    path = onnx_artifact.path.with_name(artifact_name(cfg.name, onnx_artifact.precision, ".engine"))
    if not result.gpu:
        # An engine only runs on the GPU it was built for; without its name no load could check it.
        raise ExportError(f"built a TensorRT engine but could not read the GPU's name; {path.name} was not written")
    with atomic_write(path, "wb") as f:
        f.write(result.engine)
    lp = result.layer_precisions
    log(f"tensorrt {result.tensorrt_version} on {result.gpu}: {onnx_artifact.precision} engine in "
        f"{result.build_seconds:.0f} s, {'strongly' if result.strongly_typed else 'weakly'} typed; "
        f"layer precisions {lp['by_precision']}; {lp['message']}")
    if lp["fallback"]:
        log(f"warning: {onnx_artifact.precision} engine fell back to higher precision: {lp['message']}")
    source_manifest = read_manifest(onnx_artifact.path)
    manifest = Manifest.for_config(
        cfg, artifact=path.name, format="tensorrt", precision=onnx_artifact.precision,
        **{**common, "opset": source_manifest.opset},
        calibration=source_manifest.calibration, higher_precision=source_manifest.higher_precision,
        int8_base=source_manifest.int8_base, source=onnx_artifact.path.name, gpu=result.gpu,
        verification={"layer_precisions": lp, "strongly_typed": result.strongly_typed, "tf32": result.tf32,
                      "profile": {k: list(v) for k, v in result.profile.items()},
                      "timing_cache": Path(cache).name, "build_seconds": result.build_seconds},
    )
    mpath = write_manifest(manifest, path)
    log(f"wrote {path}")
    return ExportedArtifact(path, mpath, "tensorrt", onnx_artifact.precision, manifest.verification)

