"""Making and opening the engines a benchmark times.

For every variant the `--engines` names are made on demand: the weights go to
`<work_dir>/<variant>/` as a `.pth` (random weights with a fixed seed unless `--checkpoint`), the
ONNX / FP16 / INT8 models and TensorRT engines are written there by
`tokenpose.export.pipeline.export_model` (the AOTInductor package by `export_aoti`) and reused
while their manifest matches those weights;
every engine is opened with `load_engine`. Engines that cannot run here (no GPU, no TensorRT, no
calibration data, an export or load error, a precision this device only emulates unless
`--emulated`) come back as `SkippedEngine`s with the reason, never dropped silently. `--engine` files are opened as they are (`open_engine_files`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenpose.bench.results import SkippedEngine, failure_reason
from tokenpose.bench.settings import ENGINES, BenchSettings, EngineSpec
from tokenpose.engines.base import load_engine
from tokenpose.engines.torch_engine import emulated_reason
from tokenpose.errors import TokenPoseError
from tokenpose.export.aoti import export_aoti
from tokenpose.export.pipeline import ExportOptions, artifact_name, export_model
from tokenpose.export.tensorrt import tensorrt_unavailable_reason
from tokenpose.files import ensure_writable_dir
from tokenpose.manifest import BatchRange, sha256_file, verify_manifest
from tokenpose.models import create_model
from tokenpose.models.checkpoints import save_weights
from tokenpose.models.config import ModelConfig, get_config

__all__ = ["PreparedEngine", "cached_artifact", "open_engine_files", "prepare_engines"]

# What making or opening one engine may raise without ending the whole benchmark.
_ENGINE_ERRORS = (TokenPoseError, ValueError, OSError, RuntimeError)


@dataclass
class PreparedEngine:
    """An opened engine and what the report says about it."""

    name: str  # the --engines name, or the file name of an --engine file
    engine: Any
    backend: str
    precision: str
    artifact: str | None
    emulated: bool = False  # a precision the device has no instructions for (timed with --emulated)


def _weights_file(variant: str, work: Path, checkpoint: str | None, seed: int) -> Path:
    """The `.pth` every engine of `variant` is made from: the checkpoint, or seeded random weights."""
    if checkpoint is not None:
        return Path(checkpoint)
    path = work / f"tokenpose_{variant}_random{seed}.pth"
    if not path.is_file():
        torch.manual_seed(seed)
        save_weights(create_model(variant), path, variant=variant, random_weights=True)
    return path


def cached_artifact(path: Path, weights_sha: str, settings: BenchSettings) -> bool:
    """True when `path` and its manifest exist, match, and were made from these weights with what
    this run asks for: a batch range up to its largest batch (an engine profile is fixed at build
    time), for INT8 the same calibration data and size, and for an AOTInductor package a compile
    whose "freezing" took effect, by an export_aoti that knew the fused attention kernel."""
    if not path.is_file():
        return False
    try:
        manifest = verify_manifest(path)
    except TokenPoseError:
        return False
    if manifest.checkpoint_sha256 != weights_sha or manifest.batch.get("max", 0) < max(settings.batches):
        return False
    if manifest.format == "pt2" and not {"frozen", "attention"} <= set(manifest.verification or {}):
        # "frozen" absent: compiled before export_aoti turned grad mode off (weights never frozen);
        # "attention" absent: made before the fused attention kernel, always with SDPA.
        return False
    if manifest.precision == "int8":
        calib = manifest.calibration or {}
        source = calib.get("source")
        if (settings.calib_data is None or source is None
                or Path(source).resolve() != Path(settings.calib_data).resolve()
                or calib.get("num_crops") != settings.calib_size):
            return False
    return True


def _skip_reason(spec: EngineSpec, settings: BenchSettings) -> str | None:
    """Why `spec` cannot run with these settings on this machine; None when it can."""
    device = settings.device
    reason = None
    if spec.backend == "tensorrt":
        if device != "cuda":
            reason = "TensorRT needs an NVIDIA GPU and this run is on the CPU (no CUDA device visible)"
        else:
            reason = tensorrt_unavailable_reason()
    elif spec.backend == "onnxruntime" and device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            reason = "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
    if spec.precision == "int8" and settings.calib_data is None:
        reason = reason or "INT8 needs calibration crops: pass --calib-data (a COCO keypoints json or an image folder)"
    if spec.backend == "torch" and not settings.emulated:
        emulated = emulated_reason(spec.precision, device)
        reason = reason or (emulated and f"{emulated}; pass --emulated to time it anyway")
    return reason


def _export_missing(missing: list[EngineSpec], cfg: ModelConfig, work: Path, weights: Path,
                    settings: BenchSettings, log: Callable[[str], None]) -> str | None:
    """Export every missing artifact: the ONNX models and engines in one `export_model` call (it
    always writes FP32 first), the AOTInductor package with `export_aoti`; the reason an export
    failed, or None."""
    precisions = {s.precision for s in missing}
    largest = max(settings.batches)
    options = ExportOptions(
        variant=cfg.name, out_dir=work, checkpoint=weights, fp16="fp16" in precisions, int8="int8" in precisions,
        calib_data=Path(settings.calib_data) if settings.calib_data else None, calib_size=settings.calib_size,
        batch=BatchRange(1, min(8, largest), largest), engine=any(s.backend == "tensorrt" for s in missing),
    )
    log(f"{cfg.name}: exporting {', '.join(s.name for s in missing)} into {work}")
    try:
        if any(s.backend != "aoti" for s in missing):
            export_model(options, log=lambda msg: log(f"  {msg}"))
        if any(s.backend == "aoti" for s in missing):
            export_aoti(cfg.name, work / artifact_name(cfg.name, "fp32", ".pt2"), checkpoint=weights, batch=options.batch,
                        device=settings.device, log=lambda msg: log(f"  {msg}"))
    except _ENGINE_ERRORS as exc:
        return f"export failed: {failure_reason(exc, None)}"
    return None


def _load_options(spec: EngineSpec, cfg: ModelConfig, settings: BenchSettings) -> dict[str, Any]:
    """`load_engine` keyword arguments for a made engine of `spec`."""
    device = settings.device
    if spec.backend == "torch":
        return {"variant": cfg.name, "device": device, "precision": spec.precision, "compile": spec.compile}
    if spec.backend == "aoti":
        return {"device": device}
    if spec.backend == "onnxruntime":
        return {"device": device, **({"threads": settings.threads} if settings.threads else {})}
    return {"device": "cpu"} if device == "cpu" else {}  # TensorRT runs on its own device


def prepare_engines(settings: BenchSettings, variant: str, log: Callable[[str], None]
                    ) -> tuple[list[PreparedEngine], list[SkippedEngine]]:
    """Make (export if needed) and open every engine `settings.engines` names for `variant`."""
    cfg = get_config(variant)
    skipped: list[SkippedEngine] = []
    wanted: list[EngineSpec] = []
    for spec in (ENGINES[name] for name in settings.engines):
        reason = _skip_reason(spec, settings)
        if reason:
            skipped.append(SkippedEngine(variant, spec.name, reason))
        else:
            wanted.append(spec)
    if not wanted:
        return [], skipped

    work = ensure_writable_dir(Path(settings.work_dir) / variant)
    weights = _weights_file(variant, work, settings.checkpoint, settings.seed)
    weights_sha = sha256_file(weights)
    paths = {s.name: weights if s.backend == "torch" else work / artifact_name(cfg.name, s.precision, s.suffix)
             for s in wanted}
    missing = [s for s in wanted if s.backend != "torch" and not cached_artifact(paths[s.name], weights_sha, settings)]
    export_error = _export_missing(missing, cfg, work, weights, settings, log) if missing else None

    prepared: list[PreparedEngine] = []
    for spec in wanted:
        path = paths[spec.name]
        if not path.is_file():
            skipped.append(SkippedEngine(variant, spec.name, export_error or f"export did not write {path.name}"))
            continue
        try:
            engine = load_engine(path, **_load_options(spec, cfg, settings))
        except _ENGINE_ERRORS as exc:
            skipped.append(SkippedEngine(variant, spec.name, f"cannot open {path.name}: {failure_reason(exc, None)}"))
            continue
        emulated = spec.backend == "torch" and emulated_reason(spec.precision, settings.device) is not None
        prepared.append(PreparedEngine(spec.name, engine, spec.backend, spec.precision, str(path), emulated))
    return prepared, skipped


def open_engine_files(settings: BenchSettings, log: Callable[[str], None]
                      ) -> tuple[dict[str, list[PreparedEngine]], list[SkippedEngine]]:
    """`--engine` files, grouped by the variant their manifest (or checkpoint) names."""
    by_variant: dict[str, list[PreparedEngine]] = {}
    skipped = []
    for f in settings.engine_files:
        path = Path(f)
        options: dict[str, Any] = {}
        if path.suffix == ".onnx":
            options = {"device": settings.device, **({"threads": settings.threads} if settings.threads else {})}
        elif path.suffix == ".pth":  # the variant comes from the checkpoint's metadata or key shapes
            options = {"device": settings.device}
        try:
            engine = load_engine(path, **options)
        except _ENGINE_ERRORS as exc:
            skipped.append(SkippedEngine("?", path.name, f"cannot open {path.name}: {failure_reason(exc, None)}"))
            continue
        log(f"opened {path.name}: {engine.name} {engine.precision}, variant {engine.config.name}")
        by_variant.setdefault(engine.config.name, []).append(
            PreparedEngine(path.name, engine, engine.name, engine.precision, str(path)))
    return by_variant, skipped
