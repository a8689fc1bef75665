"""`make demo`: the main job on a fresh machine.

1. the model-zoo table (parameters and GFLOPs beside the paper's);
2. export S-v2 to ONNX FP32 and FP16, each verified against PyTorch (the export prints the
   heatmap and keypoint differences) and written with its manifest;
3. a small side-by-side benchmark: PyTorch eager against the two ONNX models, batch 1 and 4.

Everything lands in `demo_out/`. No official TokenPose weights are published, so the model is
randomly initialised: the figures check the export and the speed, not the pose accuracy.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from tokenpose.bench.harness import BenchSettings, run_benchmark
from tokenpose.export.pipeline import ExportOptions, export_model
from tokenpose.models.complexity import zoo_table
from tokenpose.models.zoo import render_zoo

OUT = Path("demo_out")


def main() -> None:
    console = Console(width=max(Console().width, 100))
    console.rule("1. TokenPose model zoo")
    console.print(render_zoo(zoo_table()))

    console.rule("2. Export S-v2 to ONNX (FP32 + FP16) and verify against PyTorch")
    summary = export_model(ExportOptions(variant="s-v2", out_dir=OUT, fp16=True), log=console.print)
    onnx_files = [str(a.path) for a in summary.artifacts if a.format == "onnx"]

    console.rule("3. Benchmark: PyTorch eager vs ONNX Runtime (CPU), batch 1 and 4")
    settings = BenchSettings(
        variants=["s-v2"], engines=["torch"], engine_files=onnx_files, batches=[1, 4],
        warmup=1, iters=3, work_dir=str(OUT / "bench"), calib_data=None, peak_size=1024,
    )
    result = run_benchmark(settings, log=console.print, command="make demo")
    table = Table(title="S-v2 on this CPU, side by side in one run")
    for name in ("engine", "precision", "batch", "p50 ms", "p99 ms", "images/s", "x torch"):
        table.add_column(name, justify="left" if name == "engine" else "right", no_wrap=True)
    for row in result.to_dict()["rows"]:
        if row["status"] != "ok":
            table.add_row(row["engine"], row["precision"], str(row["batch"]), "failed", row["reason"] or "", "", "")
            continue
        lat = row["latency_ms"]
        speedup = row.get("speedup_vs_torch")  # None when the torch row of that batch failed
        table.add_row(
            row["engine"], row["precision"], str(row["batch"]), f"{lat['p50']:.1f}", f"{lat['p99']:.1f}",
            f"{row['throughput_ips']:.2f}", f"{speedup:.2f}x" if speedup is not None else "-",
        )
    console.print(table)
    console.print(
        f"\nArtifacts and manifests: {', '.join(onnx_files)}\n"
        "Next: `tokenpose-bench --variant s-v2` for the full benchmark, `tokenpose export --help` for INT8 "
        "and TensorRT, `tokenpose predict IMAGE --engine FILE` to draw poses."
    )


if __name__ == "__main__":
    main()
