"""The benchmark run behind `tokenpose-bench`: one timing loop for every engine (DESIGN 10).

`run_benchmark(settings)` does, per variant:

1. makes and opens the engines `--engines` names, and opens the `--engine` files
   (`tokenpose.bench.preparation`); what cannot run here is listed in `skipped` with the reason;
2. times every engine at every batch size on the same seeded input, side by side
   (`tokenpose.bench.timing`, memory from `tokenpose.bench.memory`);
3. measures the machine's matmul peak in each (library, precision, device) an engine used, before
   and after the timed runs (`tokenpose.bench.peak`), and puts the achieved GFLOP/s (true FLOPs
   from `tokenpose.models.complexity`) beside it as a fraction;
4. optionally (`pipeline=True`) times `PosePredictor` end to end (`tokenpose.bench.pipeline`).

It returns a `BenchResult` (`tokenpose.bench.results`, JSON schema `tokenpose-bench/1`) with the
machine's provenance (`tokenpose.bench.provenance`); `tokenpose.bench.report` renders it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import asdict

import torch

from tokenpose.bench.peak import PeakKey, measure_peaks, peak_key
from tokenpose.bench.pipeline import Scene, pipeline_scenes, run_pipeline, synthetic_scenes
from tokenpose.bench.preparation import PreparedEngine, open_engine_files, prepare_engines
from tokenpose.bench.profile import profile_onnx
from tokenpose.bench.provenance import collect_provenance, command_line, load_average
from tokenpose.bench.results import (
    BenchResult,
    BenchRow,
    MatmulPeak,
    failure_reason,
    fill_speedups,
    latency_stats,
)
from tokenpose.bench.settings import BASELINE_ENGINE, BenchError, BenchSettings
from tokenpose.bench.timing import Runner, time_batch
from tokenpose.engines.base import BACKENDS
from tokenpose.export.onnx import synthetic_inputs
from tokenpose.models.complexity import Complexity, measure
from tokenpose.models.config import get_config, list_variants

__all__ = ["run_benchmark"]

Log = Callable[[str], None]


def run_benchmark(settings: BenchSettings, log: Log = lambda _m: None, command: str | None = None) -> BenchResult:
    """Run everything `settings` asks for and return the result (see the module docstring).

    `settings` is checked first (BenchError naming the bad option); `log` gets progress lines;
    `command` is recorded as the command line (default: this process's).
    """
    settings.check(list_variants(), tuple(BACKENDS), torch.cuda.is_available())
    if settings.threads:
        torch.set_num_threads(settings.threads)
    result = BenchResult(settings=asdict(settings), provenance=collect_provenance(settings.threads),
                         command=command if command is not None else command_line())

    file_engines, file_skipped = open_engine_files(settings, log)
    result.skipped.extend(file_skipped)
    variants = list(settings.variants) if settings.engines else []
    variants += [v for v in file_engines if v not in variants]
    peaks: dict[PeakKey, MatmulPeak] = {}
    scenes: list[Scene] | None = None
    for variant in variants:
        prepared = _bench_variant(variant, file_engines.get(variant, []), settings, result, peaks, log)
        if settings.pipeline and prepared:
            if scenes is None:
                scenes = _scenes(settings)
            for prep in prepared:
                log(f"{variant}: pipeline, {settings.persons} persons per image: {prep.name}")
                result.pipeline.append(run_pipeline(prep, variant, scenes, settings.persons, warmup=1))

    result.peaks = list(peaks.values())
    _fill_derived(result, peaks)
    result.provenance["load_average"]["end"] = load_average()
    result.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if not result.rows and not result.skipped:
        raise BenchError("nothing was measured")
    return result


def _bench_variant(variant: str, from_files: list[PreparedEngine], settings: BenchSettings, result: BenchResult,
                   peaks: dict[PeakKey, MatmulPeak], log: Log) -> list[PreparedEngine]:
    """Prepare and time every engine of `variant` into `result`; returns the engines that opened."""
    # A file's variant may be outside the table (a reduced config): its engine knows its sizes,
    # but its FLOPs are unknown (the ONNX engine's config for such a variant is a placeholder).
    known = variant in list_variants()
    cfg = get_config(variant) if known else from_files[0].engine.config
    comp = measure(cfg) if known else None
    if comp is not None:
        result.complexity.append(comp.as_dict())
    named = settings.engines and variant in settings.variants
    prepared, skipped = prepare_engines(settings, variant, log) if named else ([], [])
    prepared += from_files
    result.skipped.extend(skipped)
    for s in skipped:
        log(f"{variant}: {s.engine} skipped: {s.reason}")
    if not prepared:
        return prepared
    keys = [peak_key(p.backend, p.precision, settings.device) for p in prepared]
    measure_peaks(keys, peaks, settings.peak_size, settings.threads, log)
    for batch in settings.batches:
        images = synthetic_inputs(cfg, batch, seed=settings.seed)
        runners = []
        for prep in prepared:
            try:
                runners.append(Runner(prep, images, settings.device, settings.cuda_graphs))
            except Exception as exc:  # noqa: BLE001 - e.g. CUDA graph capture failing: a failed row
                result.rows.append(BenchRow(variant, prep.name, prep.backend, prep.precision, settings.device,
                                            batch, "failed", reason=failure_reason(exc), artifact=prep.artifact))
        log(f"{variant}: batch {batch}: timing {', '.join(r.prep.name for r in runners)}")
        time_batch(runners, settings)
        for r in runners:
            row = _row(r, variant, batch, comp, settings.device)
            result.rows.append(row)
            if row.status == "ok":
                log(f"  {row.engine:<12} p50 {row.latency_ms.p50:9.2f} ms  {row.throughput_ips:8.2f} img/s")
            else:
                log(f"  {row.engine:<12} failed: {row.reason}")
    measure_peaks(keys, peaks, settings.peak_size, settings.threads, log)
    if settings.profile:
        _profile(prepared, cfg, variant, settings, result, log)
    return prepared


def _profile(prepared: list[PreparedEngine], cfg, variant: str, settings: BenchSettings, result: BenchResult,
             log: Log) -> None:
    """ONNX Runtime's per-op table for every ONNX Runtime engine, at the largest batch."""
    batch = max(settings.batches)
    images = synthetic_inputs(cfg, batch, seed=settings.seed)
    for prep in prepared:
        if prep.backend == "onnxruntime" and hasattr(prep.engine, "profiled_session"):
            log(f"{variant}: profiling {prep.name} at batch {batch}")
            try:
                result.profiles.append(profile_onnx(prep, images, variant))
            except Exception as exc:  # noqa: BLE001 - a profile that cannot run is noted, the timings stand
                log(f"  {prep.name}: profile failed: {failure_reason(exc)}")


def _scenes(settings: BenchSettings) -> list[Scene]:
    if settings.pipeline_data is None:
        return synthetic_scenes(settings.persons, settings.pipeline_images, settings.seed)
    return pipeline_scenes(settings.pipeline_data, settings.persons, settings.pipeline_images, settings.seed)


def _row(r: Runner, variant: str, batch: int, comp: Complexity | None, device: str) -> BenchRow:
    """The result row of one runner: latency statistics, throughput, CPU use, memory, GFLOP/s."""
    p = r.prep
    row = BenchRow(variant, p.name, p.backend, p.precision, device, batch, "ok", timing=r.timing,
                   iters=len(r.samples), artifact=p.artifact, emulated=p.emulated)
    if comp is not None:
        row.params, row.gflops_paper_convention, row.true_gflops = (
            comp.params, comp.gflops_paper_convention, comp.true_gflops)
    if r.error is not None or not r.samples:
        row.status, row.reason = "failed", r.error or "no timed call completed"
        return row
    stats = latency_stats(r.samples)
    row.latency_ms = stats
    row.throughput_ips = batch / (stats.mean / 1e3)
    row.cpu_util = r.cpu_s / r.wall_s if r.wall_s > 0 and r.timing == "wall_clock" else None
    row.memory = r.memory.as_dict()
    if comp is not None:
        row.achieved_gflops_per_s = comp.executed_gflops * row.throughput_ips
    return row


def _fill_derived(result: BenchResult, peaks: dict[PeakKey, MatmulPeak]) -> None:
    """Peak fraction and speedup vs PyTorch eager FP32, for the rows that ran."""
    base: dict[tuple[str, int, str], float] = {}
    for r in sorted(result.rows, key=lambda r: r.engine != BASELINE_ENGINE):  # the named engine first
        if r.backend == "torch" and r.precision == "fp32" and r.status == "ok":
            base.setdefault((r.variant, r.batch, r.device), r.throughput_ips)
    for r in result.rows:
        if r.status != "ok":
            continue
        peak = peaks.get(peak_key(r.backend, r.precision, r.device))
        if peak is not None and peak.gflops_per_s and r.achieved_gflops_per_s is not None:
            r.peak_gflops_per_s = peak.gflops_per_s
            r.peak_fraction = r.achieved_gflops_per_s / peak.gflops_per_s
        b = base.get((r.variant, r.batch, r.device))
        if b:
            r.speedup_vs_torch = r.throughput_ips / b
    fill_speedups(result.rows, "onnxruntime", "speedup_vs_onnx", first="onnx")
