"""The export pipeline behind `tokenpose-export`: FP32 ONNX, then FP16 / INT8, then engines.

Every artifact is checked before it is written and written atomically with its manifest:

1. FP32: export, `check_graph`, optional onnxslim pass, ONNX Runtime vs PyTorch on batches 1 and
   a larger one (max abs heatmap difference must be <= `tolerance`, 1e-4).
2. FP16 / INT8: convert, check, then ONNX Runtime FP16/INT8 vs ONNX Runtime FP32 on the real
   crops of the calibration data (synthetic inputs when there is none, FP16 only): heatmap and
   keypoint differences, OKS for COCO variants.
3. Engines: one per ONNX model when TensorRT imports (or a one-line reason why not).

Files in `out_dir`: `tokenpose_<variant>_<precision>.onnx` / `.engine`, each with `<file>.json`,
and `tokenpose.timing.cache` shared by the engine builds.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokenpose.export.calibration import CalibrationSet, load_calibration_set
from tokenpose.manifest import (
    BatchRange,
    Manifest,
    manifest_path,
    sha256_file,
    write_manifest,
)
from tokenpose.export.onnx import (
    ExportError,
    check_graph,
    compare_heatmaps,
    export_onnx_model,
    ort_session,
    run_session,
    simplify_graph,
    synthetic_inputs,
    verify_against_torch,
)
from tokenpose.export.precision import Int8Settings, convert_fp16, quantize_int8
from tokenpose.files import atomic_write
from tokenpose.models.config import get_config

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


@dataclass
class ExportOptions:
    """What to export. Sizes come from the variant; batch is the engine profile (min:opt:max)."""

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
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExportError(f"output folder {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tokenpose-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ExportError(f"output folder {path} is not writable: {exc.strerror or exc}") from None
    return path


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


def export_model(options: ExportOptions, log: Callable[[str], None] = print) -> ExportSummary:
    """Run the whole export; returns what was written. Raises TokenPoseError subclasses / ValueError."""
    from tokenpose.models import create_model

    cfg = get_config(options.variant)
    batch = options.batch
    if not isinstance(batch, BatchRange):
        batch = BatchRange.parse(str(batch))
    if options.opset < 17:
        raise ValueError(f"--opset must be >= 17 (LayerNormalization is native from 17), got {options.opset}")
    if options.int8 and options.calib_data is None:
        raise ValueError("--int8 needs --calib-data: a folder of person images or a COCO keypoints json")
    engine_wanted, engine_reason = _engine_decision(options.engine)
    out_dir = ensure_writable_dir(options.out_dir)
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

    proto = export_onnx_model(model, opset=options.opset)
    check_graph(proto)
    simplify_info = {"applied": False, "reason": "disabled (--no-simplify)"}
    if options.simplify:
        proto, simplify_info = simplify_graph(proto)
        check_graph(proto)
        log(f"simplification: {simplify_info['tool'] or 'none'}: {simplify_info['reason']}")
    fp32_session = ort_session(proto)
    parity = verify_against_torch(
        model, proto, batches=options.verify_batches, tolerance=options.tolerance, session=fp32_session,
        inputs=None if calib is None else calib.images,
    )
    for row in parity.rows:
        log(f"fp32 ONNX Runtime vs PyTorch, batch {row['batch']}: max |heatmap diff| {row['max_abs']:.2e}, "
            f"keypoints max {row['kpt_max_px']:.3f} px (heatmap), mean {row['kpt_mean_px']:.3f} px")
    if not parity.passed:
        raise ExportError(
            f"FP32 ONNX differs from PyTorch by {parity.max_abs:.2e} > {options.tolerance:.0e}; nothing was written"
        )
    fp32_path = out_dir / artifact_name(cfg.name, "fp32")
    manifest = Manifest.for_config(
        cfg, artifact=fp32_path.name, format="onnx", precision="fp32", **common,
        verification={"onnxruntime_vs_torch": parity.to_dict(), "simplification": simplify_info},
    )
    summary.artifacts.append(_write_onnx(proto, manifest, fp32_path))
    log(f"wrote {fp32_path}")

    if options.aoti:
        from tokenpose.export.aoti import aoti_artifact_name, export_aoti

        done = export_aoti(
            model, out_dir / aoti_artifact_name(cfg.name), batch=batch, log=log,
            manifest_fields={k: common[k] for k in ("random_weights", "checkpoint", "checkpoint_sha256")},
        )
        summary.artifacts.append(ExportedArtifact(done.path, done.manifest, "pt2", "fp32", done.report))

    if options.fp16 or options.int8:
        if calib is not None:
            eval_x, where = calib.images, f"{len(calib)} real crops of {Path(calib.source).name}"
        else:
            eval_x, where = synthetic_inputs(cfg, 8), "8 synthetic inputs (pass --calib-data for real crops)"
        ref = run_session(fp32_session, eval_x, batch_size=8)
        boxes = {} if calib is None else {"centers": calib.centers, "scales": calib.scales, "areas": calib.areas}

    if options.fp16:
        fp16_proto, fp16_info = convert_fp16(proto, keep_head_fp32=options.fp16_keep_head_fp32)
        check_graph(fp16_proto)
        got = run_session(ort_session(fp16_proto), eval_x, batch_size=8)
        agree = compare_heatmaps(ref, got, cfg, **boxes)
        log(_agreement_line("fp16", agree, where))
        path = out_dir / artifact_name(cfg.name, "fp16")
        manifest = Manifest.for_config(
            cfg, artifact=path.name, format="onnx", precision="fp16", **common, higher_precision=fp16_info,
            verification={"vs_fp32": {**agree.to_dict(), "inputs": where,
                                      "runtime": "onnxruntime CPU (float16 ops without a CPU kernel run in float32)"}},
        )
        summary.artifacts.append(_write_onnx(fp16_proto, manifest, path))
        log(f"wrote {path}")

    if options.int8:
        int8_proto, int8_info = quantize_int8(proto, calib, settings=options.int8_settings)
        check_graph(int8_proto)
        got = run_session(ort_session(int8_proto), eval_x, batch_size=8)
        agree = compare_heatmaps(ref, got, cfg, **boxes)
        log(_agreement_line("int8", agree, where + " (the calibration crops themselves)"))
        path = out_dir / artifact_name(cfg.name, "int8")
        manifest = Manifest.for_config(
            cfg, artifact=path.name, format="onnx", precision="int8", **common,
            calibration=int8_info["calibration"],
            higher_precision={k: v for k, v in int8_info.items() if k != "calibration"},
            verification={"vs_fp32": {**agree.to_dict(), "inputs": where, "runtime": "onnxruntime CPU"}},
        )
        summary.artifacts.append(_write_onnx(int8_proto, manifest, path))
        log(f"wrote {path}")

    if not engine_wanted:
        summary.engine_skipped = engine_reason
        log(f"engine step skipped: {engine_reason}")
        return summary
    cache = options.timing_cache or out_dir / TIMING_CACHE_NAME
    for onnx_artifact in [a for a in summary.artifacts if a.format == "onnx"]:
        summary.artifacts.append(
            _build_engine_artifact(onnx_artifact, cfg, batch, common, cache, options.workspace_gib, log)
        )
    return summary


def _engine_decision(engine: bool | None) -> tuple[bool, str | None]:
    from tokenpose.export.tensorrt import tensorrt_unavailable_reason

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
                           cache: Path, workspace_gib: float, log) -> ExportedArtifact:
    from tokenpose.export.tensorrt import build_engine

    result = build_engine(
        onnx_artifact.path, precision=onnx_artifact.precision, batch=batch, input_hw=cfg.input_hw,
        workspace_bytes=int(workspace_gib * (1 << 30)), timing_cache=cache,
    )
    path = onnx_artifact.path.with_suffix(".engine")
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
    source_manifest = Manifest.from_dict(
        json.loads(manifest_path(onnx_artifact.path).read_text())
    )
    manifest = Manifest.for_config(
        cfg, artifact=path.name, format="tensorrt", precision=onnx_artifact.precision, **common,
        calibration=source_manifest.calibration, higher_precision=source_manifest.higher_precision,
        source=onnx_artifact.path.name, gpu=result.gpu,
        verification={"layer_precisions": lp, "strongly_typed": result.strongly_typed,
                      "profile": {k: list(v) for k, v in result.profile.items()},
                      "timing_cache": Path(cache).name, "build_seconds": result.build_seconds},
    )
    mpath = write_manifest(manifest, path)
    log(f"wrote {path}")
    return ExportedArtifact(path, mpath, "tensorrt", onnx_artifact.precision, manifest.verification)

