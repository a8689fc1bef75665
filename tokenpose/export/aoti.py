"""AOTInductor export: a TokenPose model as a `.pt2` package for libtorch (C++) and Python.

`export_aoti` traces the model with `torch.export.export` (batch axis dynamic, `Dim("batch")`
over the manifest's batch range), compiles it ahead of time with
`torch._inductor.aoti_compile_and_package`, checks the compiled package against the eager model,
and only then moves it to its final name and writes the manifest `<file>.pt2.json` beside it
(DESIGN convention 7). The same file runs in C++ (`torch::inductor::AOTIModelPackageLoader`,
see `cpp/`) and in Python (`tokenpose.engines.aoti_engine.AotiEngine`).

A package holds machine code: CPU packages are compiled for the exporting machine's instruction
set (recorded as `AOTI_CPU_ISA` in the package metadata and `cpu_isa` in the manifest), CUDA
packages for its GPU architecture. Export on the kind of machine that will run it. Compiling
needs a C++ compiler (g++/clang) at export time; loading does not.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenpose.errors import TokenPoseError
from tokenpose.files import atomic_write
from tokenpose.manifest import BatchRange, Manifest, sha256_file, write_manifest
from tokenpose.models import create_model
from tokenpose.models import fused_attention as attention_kernel
from tokenpose.models.config import ModelConfig

__all__ = ["AOTI_SUFFIX", "AotiExport", "AotiExportError", "aoti_artifact_name", "export_aoti", "op_library_name"]

AOTI_SUFFIX = ".pt2"
DEFAULT_BATCH = BatchRange(1, 8, 32)
# Inductor settings of the package: "freezing" folds the weights in as constants, so the CPU
# convolutions and Linears get oneDNN's pre-packed weight layouts (benchmarks/README.md, torch path).
DEFAULT_INDUCTOR_CONFIGS: dict[str, Any] = {"freezing": True}
INPUT_NAME = "images"
OUTPUT_NAME = "heatmaps"


class AotiExportError(TokenPoseError):
    """The AOTInductor export failed or the compiled package did not match the eager model."""


@dataclass
class AotiExport:
    """What `export_aoti` wrote: the package, its manifest and the parity figures."""

    path: Path
    manifest: Path
    report: dict


def aoti_artifact_name(variant: str, precision: str = "fp32") -> str:
    """`tokenpose_<variant>_<precision>.pt2`, the naming of the other exported artifacts."""
    return f"tokenpose_{variant}_{precision}{AOTI_SUFFIX}"


def op_library_name(package: str | os.PathLike) -> str:
    """`tokenpose_s-v2_fp32.attention.so` beside `tokenpose_s-v2_fp32.pt2`: the package's copy of the
    fused attention library."""
    return Path(package).name.removesuffix(AOTI_SUFFIX) + ".attention.so"


def _attention_library(device: str, wanted: bool | None, log: Callable[[str], None]) -> Path | None:
    """The fused attention library the package will call (loaded), or None for SDPA.

    wanted None: the kernel when it helps here (CPU package, AVX-512, a compiler to build it);
    True: the kernel or AotiExportError; False: SDPA."""
    if device != "cpu" or wanted is False:
        return None
    reason = attention_kernel.unavailable_reason()
    try:
        if reason is not None:
            raise attention_kernel.FusedAttentionError(reason)
        return attention_kernel.ensure_loaded(log=log)
    except attention_kernel.FusedAttentionError as exc:
        if wanted:
            raise AotiExportError(f"fused_attention=True but the kernel cannot be used here: {exc}") from exc
        log(f"attention: scaled_dot_product_attention (fused kernel not used: {_first_line(exc)})")
        return None


def _publish_library(library: Path, out_path: Path) -> str:
    """Copy `library` beside the package (atomically); returns its file name."""
    name = op_library_name(out_path)
    with atomic_write(out_path.parent / name, "wb") as f:
        f.write(library.read_bytes())
    return name


def _as_model(model_or_variant, checkpoint) -> tuple[torch.nn.Module, bool]:
    """(model in eval mode, random_weights) from a module, a variant name or a ModelConfig."""
    if isinstance(model_or_variant, torch.nn.Module):
        if checkpoint is not None:
            raise ValueError("pass a checkpoint only with a variant name or config, not with a model")
        if not isinstance(getattr(model_or_variant, "config", None), ModelConfig):
            raise TypeError("the model must be a TokenPose module (it needs a `.config` ModelConfig)")
        return model_or_variant, False
    return create_model(model_or_variant, checkpoint), checkpoint is None


def _checked_args(out_path: Path, batch: BatchRange | str, device: str, verify_batches: Sequence[int],
                  manifest_fields: Mapping[str, Any] | None) -> tuple[BatchRange, list[int]]:
    """(batch range, batch sizes to verify) once the arguments are known to be usable."""
    if out_path.suffix != AOTI_SUFFIX:
        raise ValueError(f"an AOTInductor package must end in {AOTI_SUFFIX}, got {out_path.name!r}")
    if not isinstance(batch, BatchRange):
        batch = BatchRange.parse(str(batch))
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise AotiExportError("device 'cuda' requested but CUDA is not available to PyTorch here")
    settable = {f.name for f in dataclasses.fields(Manifest)} - {"artifact", "sha256", "format"}
    bad = sorted(set(manifest_fields or {}) - settable)
    if bad:
        raise ValueError(f"manifest_fields: {', '.join(map(repr, bad))} cannot be set (not a settable Manifest field)")
    checks = sorted({int(b) for b in verify_batches if batch.min <= int(b) <= batch.max}) or [batch.min]
    return batch, checks


def _trace(model: torch.nn.Module, batch: BatchRange, device: str, log: Callable[[str], None]):
    """`torch.export` of `model` with the batch axis dynamic over `batch`: (program, seconds)."""
    cfg: ModelConfig = model.config
    if batch.min == batch.max:  # one fixed batch size: a static graph
        example = torch.zeros(batch.min, 3, *cfg.input_hw, device=device)
        dynamic = None
    else:
        # Trace with a batch of at least 2: with 1, export would specialise size-1 broadcasts.
        example = torch.zeros(min(max(2, batch.min), batch.max), 3, *cfg.input_hw, device=device)
        dynamic = ({0: torch.export.Dim("batch", min=batch.min, max=batch.max)},)
    started = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarnings from torch.export internals
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=False)
    except Exception as exc:
        raise AotiExportError(f"torch.export failed for variant {cfg.name!r}: {_first_line(exc)}") from exc
    seconds = time.perf_counter() - started
    log(f"torch.export: {seconds:.1f} s, batch {batch.min}..{batch.max}" + (" (dynamic)" if dynamic else " (static)"))
    return program, seconds


def _compile_verified(program, model: torch.nn.Module, out_path: Path, checks: Sequence[int], device: str,
                      tolerance: float, inductor_configs: Mapping[str, Any], log: Callable[[str], None]) -> dict:
    """Compile `program` into a temp folder beside `out_path`, compare it with the eager model and
    only then rename it to `out_path`. Returns the report; AotiExportError when it differs."""
    cfg: ModelConfig = model.config
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent))
    try:
        tmp_pkg = tmp_dir / out_path.name
        started = time.perf_counter()
        try:
            # Under no_grad: Inductor applies "freezing" only when grad mode is off; with it on, the
            # setting is silently ignored (BatchNorms recomputed, weights not pre-packed: S-v2 1 - 8% slower).
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_pkg),
                                                         inductor_configs=dict(inductor_configs))
        except Exception as exc:
            raise AotiExportError(
                f"AOTInductor compilation failed for variant {cfg.name!r}: {_first_line(exc)} "
                "(it needs a working C++ compiler on PATH)"
            ) from exc
        compiled_s = time.perf_counter() - started
        log(f"AOTInductor compile: {compiled_s:.1f} s")

        rows, package_meta = _verify(model, tmp_pkg, cfg, checks, device)
        worst = max(r["max_abs"] for r in rows)
        for r in rows:
            log(f"pt2 vs eager PyTorch, batch {r['batch']}: max |heatmap diff| {r['max_abs']:.2e}")
        if not worst <= tolerance:
            raise AotiExportError(
                f"the compiled package differs from eager PyTorch by {worst:.2e} > {tolerance:.0e}; nothing was written"
            )
        with open(tmp_pkg, "rb") as f:  # make the bytes durable before the rename publishes them
            os.fsync(f.fileno())
        os.replace(tmp_pkg, out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {
        "aoti_vs_torch": {"batches": rows, "max_abs": worst, "tolerance": tolerance, "passed": True},
        "device": device,
        "cpu_isa": package_meta.get("AOTI_CPU_ISA", ""),
        "compile_s": round(compiled_s, 2),
        "inductor_configs": dict(inductor_configs),
        # Compiled with grad mode off, so "freezing" took effect (tokenpose.bench re-makes packages
        # whose report lacks this key: they were compiled with it silently ignored).
        "frozen": bool(inductor_configs.get("freezing")),
    }


def export_aoti(
    model_or_variant: torch.nn.Module | str | ModelConfig,
    out_path: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    batch: BatchRange | str = DEFAULT_BATCH,
    device: str = "cpu",
    verify_batches: Sequence[int] = (1, 3),
    tolerance: float = 1e-4,
    manifest_fields: Mapping[str, Any] | None = None,
    inductor_configs: Mapping[str, Any] | None = None,
    fused_attention: bool | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> AotiExport:
    """Export a TokenPose model to an AOTInductor package `out_path` (`.pt2`) plus its manifest.

    model_or_variant: a TokenPose module (its weights are used as they are), a variant name or a
    ModelConfig (built with `checkpoint`, or random weights when None).
    batch: the batch sizes the package accepts, `BatchRange` or "min:opt:max" (min and max bound
    the dynamic batch dimension; opt is only recorded). device: "cpu" or "cuda".
    verify_batches: batch sizes on which the compiled package is compared with the eager model;
    the largest |heatmap difference| must be <= tolerance, else AotiExportError and nothing is
    written. The package is compiled into a temporary folder beside `out_path` and renamed into
    place, so an interrupted export never leaves half a file under the final name.
    manifest_fields: extra or overriding Manifest fields, e.g. `checkpoint`, `checkpoint_sha256` and
    `random_weights` when a pipeline passes a model it built from a checkpoint itself.
    inductor_configs: `torch._inductor.config` settings for the compile (default
    DEFAULT_INDUCTOR_CONFIGS); they are recorded in the manifest's verification report.
    fused_attention: CPU packages only. None (default): attention through the fused kernel
    `tokenpose::attention` where it runs here (AVX-512 CPU, a C++ compiler to build it), else SDPA;
    True: the kernel or AotiExportError; False: SDPA. A package with the kernel needs its library:
    a copy is written beside it (`op_library_name`) and named in the manifest (`op_library`); the
    verification still compares against the eager model with SDPA.
    Returns AotiExport(path, manifest path, report).
    """
    out_path = Path(out_path)
    if fused_attention and device != "cpu":
        raise ValueError("fused_attention is for CPU packages; a CUDA package uses scaled_dot_product_attention")
    batch, checks = _checked_args(out_path, batch, device, verify_batches, manifest_fields)
    model, random_weights = _as_model(model_or_variant, checkpoint)
    cfg: ModelConfig = model.config
    model = model.eval().float().to(device)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    library = _attention_library(device, fused_attention, log)
    with model.using_fused_attention(library is not None):
        program, exported_s = _trace(model, batch, device, log)
    configs = DEFAULT_INDUCTOR_CONFIGS if inductor_configs is None else inductor_configs
    with model.using_fused_attention(False):  # verified against SDPA, the reference path
        report = _compile_verified(program, model, out_path, checks, device, tolerance, configs, log)
    report["export_s"] = round(exported_s, 2)
    report["attention"] = attention_kernel.OP_NAME if library is not None else "scaled_dot_product_attention"
    op_library = _publish_library(library, out_path) if library is not None else None
    manifest = Manifest.for_config(
        cfg, artifact=out_path.name, format="pt2", precision="fp32", input_name=INPUT_NAME,
        output_name=OUTPUT_NAME, batch=batch.as_dict(), random_weights=random_weights,
        checkpoint=None if checkpoint is None else Path(checkpoint).name,
        checkpoint_sha256=None if checkpoint is None else sha256_file(checkpoint),
        verification=report, op_library=op_library,
    )
    for key, value in (manifest_fields or {}).items():
        setattr(manifest, key, value)
    mpath = write_manifest(manifest, out_path)
    log(f"wrote {out_path}")
    return AotiExport(out_path, mpath, report)


def _verify(
    model: torch.nn.Module, package: Path, cfg: ModelConfig, batches: Sequence[int], device: str
) -> tuple[list[dict], dict[str, str]]:
    """Compiled package vs eager model on seeded random inputs: (one row per batch size, package metadata)."""
    from torch._inductor import aoti_load_package

    runner = aoti_load_package(str(package))
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, 3, *cfg.input_hw, generator=gen).to(device)
            got = runner(x)
            if isinstance(got, list | tuple):
                got = got[0]
            want = model(x)
            if tuple(got.shape) != tuple(want.shape):
                raise AotiExportError(f"compiled package returned shape {tuple(got.shape)}, eager {tuple(want.shape)}")
            diff = (got.float() - want.float()).abs().max().item()
            rows.append({"batch": int(b), "max_abs": float(diff if np.isfinite(diff) else np.inf)})
    return rows, dict(runner.get_metadata())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
