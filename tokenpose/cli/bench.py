"""`tokenpose bench` / `tokenpose-bench`: latency, throughput and memory of every engine side by side.

Only the engine table (`tokenpose.bench.settings`) and the output checks (`tokenpose.files`), both
standard library only, are imported here; the harness (torch, ONNX Runtime) when the command runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from tokenpose.bench.settings import DEFAULT_ENGINES, DEFAULT_WORK_DIR, ENGINES, BenchSettings
from tokenpose.cli.common import CheckpointOpt, friendly_errors, standalone
from tokenpose.errors import TokenPoseError
from tokenpose.files import check_writable


def check_outputs(json_out: Path | None, markdown_out: Path | None, plot_out: Path | None) -> None:
    """Fail before the run, not after it, when an output cannot be written: one line naming it."""
    for path in (json_out, markdown_out, plot_out):
        if path is not None:
            check_writable(path)
    if plot_out is not None and importlib.util.find_spec("matplotlib") is None:
        raise TokenPoseError(f"--plot {plot_out} needs matplotlib: pip install matplotlib")


@friendly_errors
def command(
    variant: Annotated[str, typer.Option("--variant", "-v", help="Variant(s), comma-separated, or 'all'.")] = "s-v2",
    engines: Annotated[
        str | None,
        typer.Option("--engines", help=f"Engines, comma-separated: {', '.join(ENGINES)} "
                                       f"(default {','.join(DEFAULT_ENGINES)}, or none with --engine)."),
    ] = None,
    engine: Annotated[
        list[Path] | None, typer.Option("--engine", help="An exported .onnx/.engine/.pth file to time as it is (repeatable).")
    ] = None,
    batch: Annotated[str, typer.Option("--batch", "-b", help="Batch sizes, comma-separated.")] = "1,8,32",
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls per engine and batch.")] = 2,
    iters: Annotated[int, typer.Option("--iters", help="Timed calls per engine and batch.")] = 10,
    seconds: Annotated[
        float | None, typer.Option("--seconds", help="Time budget per engine and batch instead of --iters.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int, typer.Option("--threads", help="Intra-op threads for torch and ONNX Runtime (0: default).")] = 0,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="Time the torch engine as a CUDA graph.")] = False,
    interleave: Annotated[
        bool, typer.Option("--interleave/--sequential", help="Round-robin the engines (fair on a shared machine).")
    ] = True,
    settle_ms: Annotated[
        float, typer.Option("--settle-ms", help="Idle pause before each timed call (lets spinning thread pools sleep).")
    ] = 50.0,
    pipeline: Annotated[bool, typer.Option("--pipeline", help="Also time PosePredictor end to end (crop, engine, decode).")] = False,
    persons: Annotated[int, typer.Option("--persons", help="Person boxes per image in --pipeline.")] = 8,
    pipeline_images: Annotated[int, typer.Option("--pipeline-images", help="Images timed in --pipeline.")] = 4,
    pipeline_data: Annotated[
        Path | None,
        typer.Option("--pipeline-data", help="COCO keypoints json for --pipeline, images in ../images/ beside its "
                                             "folder (default: seeded synthetic 480x640 images and boxes)."),
    ] = None,
    checkpoint: CheckpointOpt = None,
    calib_data: Annotated[
        Path | None,
        typer.Option("--calib-data", help="INT8 calibration: COCO keypoints json or image folder "
                                          "(default: none, and the INT8 engines are skipped)."),
    ] = None,
    calib_size: Annotated[int, typer.Option("--calib-size", help="INT8 calibration crops.")] = 32,
    emulated: Annotated[
        bool, typer.Option("--emulated", help="Also time reduced precisions this device has no instructions for "
                                              "(skipped by default; their rows say 'emulated').")
    ] = False,
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Where exported models are cached.")] = DEFAULT_WORK_DIR,
    peak_size: Annotated[int, typer.Option("--peak-size", help="n of the n x n peak GEMM (0: 2048 CPU, 8192 GPU).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write the markdown report here.")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write the throughput plot (PNG) here.")] = None,
    profile: Annotated[
        bool, typer.Option("--profile", help="Per-op time table of every ONNX Runtime engine (its profiler), "
                                             "at the largest batch.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")] = False,
) -> None:
    """Benchmark engines side by side: latency p50/p90/p99, throughput, memory, % of matmul peak."""
    from tokenpose.bench.harness import run_benchmark
    from tokenpose.bench.report import markdown_report, plot_throughput, write_markdown

    settings = BenchSettings(
        variants=variant, engines=engines if engines is not None else ([] if engine else list(DEFAULT_ENGINES)),
        engine_files=[str(p) for p in engine or []], batches=batch, warmup=warmup, iters=iters, seconds=seconds,
        device=device, threads=threads, cuda_graphs=cuda_graphs, interleave=interleave, settle_ms=settle_ms, pipeline=pipeline,
        persons=persons, pipeline_images=pipeline_images, work_dir=str(work_dir), peak_size=peak_size,
        checkpoint=str(checkpoint) if checkpoint else None, calib_size=calib_size,
        calib_data=str(calib_data) if calib_data else None, pipeline_data=str(pipeline_data) if pipeline_data else None,
        emulated=emulated, profile=profile,
    )
    check_outputs(json_out, markdown_out, plot_out)
    log = (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))
    result = run_benchmark(settings, log=log)
    if json_out:
        log(f"wrote {result.write_json(json_out)}")
    if markdown_out:
        log(f"wrote {write_markdown(result, markdown_out)}")
    if plot_out:
        log(f"wrote {plot_throughput(result, plot_out)}")
    typer.echo(markdown_report(result, title=None))


main = standalone(command)
