"""The records a benchmark run produces, and their JSON form (schema `tokenpose-bench/1`).

`BenchResult.to_dict()`; every time in ms, memory in MiB:

    schema          "tokenpose-bench/1"
    created         ISO-8601 UTC time the run finished
    command         the command line
    settings        the BenchSettings (variants, engines, engine_files, batches, warmup, iters,
                    seconds, device, threads, cuda_graphs, interleave, settle_ms, pipeline, persons,
                    pipeline_images, work_dir, checkpoint, calib_data, calib_size, pipeline_data,
                    peak_size, seed)
    provenance      cpu {model, logical_cores, affinity_cores, flags}, load_average {start, end},
                    gpu {name, driver, cuda, cudnn} or null, versions {library: version},
                    threads {torch_intra_op, torch_inter_op, onnxruntime_intra_op, env}, python,
                    platform
    complexity[]    per variant: variant, input_hw, heatmap_hw, params, paper_params_m,
                    gflops_paper_convention, paper_gflops, true_gflops, true_gflops_attention,
                    executed_gflops (what our forward computes: the last layer's visual rows are not)
    peaks[]         library, precision, device, size (n of the n x n x n GEMM), gflops_per_s
                    (GOP/s for int8), repeats, error (null unless the GEMM could not run)
    rows[]          variant, engine (the --engines name or the file name), backend, precision,
                    device, batch, status ("ok" | "failed"), reason, timing ("wall_clock" |
                    "cuda_events" | "cuda_graph"), iters, latency_ms {p50, p90, p99, mean, min,
                    max}, throughput_ips (images/s = batch / mean latency), cpu_util,
                    memory {kind, peak_mb, delta_mb}, params, gflops_paper_convention,
                    true_gflops (per image), achieved_gflops_per_s (executed FLOPs x images/s), peak_gflops_per_s,
                    peak_fraction, speedup_vs_torch (throughput / torch eager FP32's at the same
                    variant, batch and device; null without a torch row), speedup_vs_onnx (the
                    same against the ONNX Runtime FP32 engine), artifact, emulated
                    (true: a precision this device has no instructions for, run with --emulated)
    skipped[]       variant, engine, reason
    pipeline[]      variant, engine, precision, persons_per_image, images, total_ms_per_image,
                    engine_ms_per_image, outside_engine_share, persons_per_s, images_per_s,
                    status, reason
    profiles[]      (--profile) variant, engine, batch, runs, total_ms (kernel time per call),
                    ops[] {op, ms per call, share, nodes}: ONNX Runtime's profiler by op type
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose.bench.settings import BenchError
from tokenpose.files import atomic_write

__all__ = [
    "SCHEMA",
    "BenchResult",
    "BenchRow",
    "LatencyStats",
    "MatmulPeak",
    "PipelineRow",
    "SkippedEngine",
    "failure_reason",
    "fill_speedups",
    "latency_stats",
    "write_result_files",
]

SCHEMA = "tokenpose-bench/1"


def write_result_files(prefix: Path, result: dict[str, Any], markdown: str) -> None:
    """A benchmark script's results: PREFIX.json (`result`) and PREFIX.md (`markdown`), each written
    atomically, the folder made if needed."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(prefix.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=2)
    with atomic_write(prefix.with_suffix(".md"), "w") as f:
        f.write(markdown)


def failure_reason(exc: BaseException, limit: int | None = 500) -> str:
    """The first line of an exception (its type name if it has no text), cut to `limit` characters
    (None: whole): the `reason` of a failed row or skipped engine."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def fill_speedups(rows: list[BenchRow], backend: str, field_name: str, first: str | None = None) -> None:
    """Set `field_name` of every ok row to its throughput over the FP32 `backend` row's at the same
    variant, batch and device (the engine named `first` is preferred as that baseline)."""
    base: dict[tuple[str, int, str], float] = {}
    for r in sorted(rows, key=lambda r: r.engine != first):
        if r.backend == backend and r.precision == "fp32" and r.status == "ok":
            base.setdefault((r.variant, r.batch, r.device), r.throughput_ips)
    for r in rows:
        b = base.get((r.variant, r.batch, r.device))
        if r.status == "ok" and b:
            setattr(r, field_name, r.throughput_ips / b)


@dataclass
class LatencyStats:
    """Latency of one call (one batch) in milliseconds; percentiles by linear interpolation."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """Percentiles p50 <= p90 <= p99 and mean/min/max of `samples_ms` (at least one sample)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise BenchError("no timing samples")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return LatencyStats(float(p50), float(p90), float(p99), float(x.mean()), float(x.min()), float(x.max()))


@dataclass
class MatmulPeak:
    library: str
    precision: str
    device: str
    size: int
    gflops_per_s: float | None  # GOP/s for int8
    repeats: int
    error: str | None = None


@dataclass
class BenchRow:
    variant: str
    engine: str
    backend: str
    precision: str
    device: str
    batch: int
    status: str  # "ok" or "failed"
    reason: str | None = None
    timing: str | None = None
    iters: int = 0
    latency_ms: LatencyStats | None = None
    throughput_ips: float | None = None
    cpu_util: float | None = None
    memory: dict[str, Any] | None = None  # {kind, peak_mb, delta_mb}
    params: int | None = None
    gflops_paper_convention: float | None = None
    true_gflops: float | None = None
    achieved_gflops_per_s: float | None = None
    peak_gflops_per_s: float | None = None
    peak_fraction: float | None = None
    speedup_vs_torch: float | None = None
    speedup_vs_onnx: float | None = None
    artifact: str | None = None
    emulated: bool = False  # a precision the device lacks instructions for (--emulated)


@dataclass
class SkippedEngine:
    variant: str
    engine: str
    reason: str


@dataclass
class PipelineRow:
    variant: str
    engine: str
    precision: str
    persons_per_image: int
    images: int
    status: str = "ok"
    reason: str | None = None
    total_ms_per_image: float | None = None
    engine_ms_per_image: float | None = None
    outside_engine_share: float | None = None
    persons_per_s: float | None = None
    images_per_s: float | None = None


@dataclass
class BenchResult:
    settings: dict[str, Any]
    provenance: dict[str, Any]
    complexity: list[dict[str, Any]] = field(default_factory=list)
    peaks: list[MatmulPeak] = field(default_factory=list)
    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[SkippedEngine] = field(default_factory=list)
    pipeline: list[PipelineRow] = field(default_factory=list)
    profiles: list[Any] = field(default_factory=list)  # tokenpose.bench.profile.OpProfile
    command: str = ""
    created: str = ""
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the module docstring, keys in that order."""
        d = asdict(self)
        order = ["schema", "created", "command", "settings", "provenance", "complexity", "peaks", "rows",
                 "skipped", "pipeline", "profiles"]
        return json.loads(json.dumps({k: d[k] for k in order}))

    def write_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_write(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path
