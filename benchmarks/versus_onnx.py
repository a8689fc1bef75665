"""Our ONNX engines side by side with another ONNX model of the same network, in ONNX Runtime.

The other model is any ONNX file that maps the same (B, 3, H, W) crops to the same (B, J, h, w)
heatmaps: typically your own `torch.onnx.export` of the official TokenPose code with the weights
our artifacts were exported from (this repository does not build or ship the official code). It
runs in a plain `onnxruntime.InferenceSession` (all graph optimisations, the same intra-op thread
count, no rewrites of ours); our artifacts run through `OnnxEngine` as `tokenpose-bench` runs them.

Every engine gets the same seeded input; the timed calls are interleaved round by round (A, B, C,
A, B, C, ...) so that load from other processes hits them alike. Figures are images/s (batch /
median call time) and ratios to the other model measured in the same rounds. Before timing, each
engine's heatmaps are compared with the other model's (max |diff|): a speed figure for a model
that computes something else is refused.

    .venv/bin/python benchmarks/versus_onnx.py --baseline official_s-v2.onnx \
        --engine engines/tokenpose_s-v2_fp32.onnx --engine engines/tokenpose_s-v2_int8.onnx \
        --batches 1,8 --out benchmarks/results/versus_official_s-v2

Other artifacts (`--engine tokenpose_s-v2_fp32.pt2`, a `.pth`) run as `load_engine` opens them, with
torch's intra-op threads set to `--threads`.

`--also-fusions attention` adds each ONNX artifact a second time, run with only those CPU graph
rewrites (`tokenpose.export.fusion`), so that a new rewrite is measured beside the old set.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from tokenpose.bench.provenance import collect_provenance
from tokenpose.bench.report import machine_line
from tokenpose.bench.results import write_result_files
from tokenpose.bench.timing import interleaved_call_times
from tokenpose.engines.base import load_engine
from tokenpose.engines.onnx_engine import OnnxEngine

# Largest max |heatmap diff| against the baseline accepted per precision (FP32 must be the same network).
PARITY = {"fp32": 1e-4, "fp16": 5e-2, "int8": 0.25}


class Baseline:
    """The other model in a plain ONNX Runtime session."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.name = f"baseline {path.name}"
        self.precision = "fp32"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, required=True, help="the other ONNX model (same input and output)")
    ap.add_argument("--engine", type=Path, action="append", required=True,
                    help="our artifact (repeatable): .onnx, or any other file load_engine opens (.pt2, .pth)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--settle-ms", type=float, default=50.0, help="idle pause before each timed call")
    ap.add_argument("--also-fusions", default=None,
                    help="comma list of CPU fusions: also run each artifact with only these ('' for none)")
    ap.add_argument("--out", type=Path, required=True, help="results prefix: writes PREFIX.json and PREFIX.md")
    args = ap.parse_args()

    engines: dict = {"baseline": Baseline(args.baseline, args.threads)}
    torch.set_num_threads(args.threads)  # the torch-based engines (.pt2, .pth)
    for path in args.engine:
        if path.suffix != ".onnx":  # an AOTInductor package or a checkpoint, as tokenpose-bench opens them
            engine = load_engine(path, device="cpu")
            engines[f"tokenpose {engine.name} {engine.precision}"] = engine
            continue
        engine = OnnxEngine.from_file(path, device="cpu", threads=args.threads)
        engines[f"tokenpose {engine.precision}"] = engine
        if args.also_fusions is not None:
            fusions = [f for f in args.also_fusions.split(",") if f]
            other = OnnxEngine.from_file(path, device="cpu", threads=args.threads, fusions=fusions)
            engines[f"tokenpose {engine.precision} ({'+'.join(fusions) or 'no fusions'})"] = other
    meta = next(e for name, e in engines.items() if name != "baseline").meta
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        x = np.random.default_rng(batch).standard_normal((batch, 3, *meta.input_hw)).astype(np.float32)
        reference = engines["baseline"](x)
        for name, run in engines.items():
            diff = float(np.abs(run(x) - reference).max())
            limit = PARITY.get(getattr(run, "precision", "fp32"), 1e-4)
            if diff > limit:
                raise SystemExit(f"{name}: max |heatmap diff| {diff:.3g} vs the baseline at batch {batch} is over "
                                 f"{limit:g}: not the same network (same weights?)")
            rows.append({"engine": name, "batch": batch, "max_abs_diff_vs_baseline": diff})
        times, _ = interleaved_call_times({name: lambda run=run: run(x) for name, run in engines.items()},
                                          args.rounds, warmup=args.warmup, settle_ms=args.settle_ms)
        base = batch / statistics.median(times["baseline"])
        for row in rows[-len(engines):]:
            ips = batch / statistics.median(times[row["engine"]])
            # Paired: the baseline's call over this engine's call in the same round, so that a drift
            # of the machine's speed between rounds cancels; the median and the quartiles of those.
            ratios = [b / t for b, t in zip(times["baseline"], times[row["engine"]])]
            paired = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
            row.update(images_per_s=ips, x_baseline=ips / base, median_ms=1e3 * statistics.median(times[row["engine"]]),
                       x_baseline_paired=paired[1], x_baseline_paired_iqr=[paired[0], paired[2]])
        for row in rows[-len(engines):]:
            print(f"batch {batch:3d}  {row['engine']:<18} {row['images_per_s']:7.2f} img/s  "
                  f"x baseline {row['x_baseline']:.2f} (paired {row['x_baseline_paired']:.2f}, quartiles "
                  f"{row['x_baseline_paired_iqr'][0]:.2f} - {row['x_baseline_paired_iqr'][1]:.2f})  "
                  f"max|diff| {row['max_abs_diff_vs_baseline']:.2e}")

    provenance = collect_provenance(threads=args.threads)
    result = {"baseline": str(args.baseline), "engines": [str(p) for p in args.engine], "threads": args.threads,
              "fusions": {name: e.session_settings.get("fused", {}) for name, e in engines.items()
                          if isinstance(e, OnnxEngine)},
              "warmup": args.warmup, "rounds": args.rounds, "settle_ms": args.settle_ms, "rows": rows,
              "provenance": provenance}
    write_result_files(args.out, result, markdown(result))


def markdown(result: dict) -> str:
    """The results table with the machine it was measured on."""
    lines = [f"Baseline: `{Path(result['baseline']).name}` in a plain ONNX Runtime session; {result['threads']} "
             f"threads, {result['warmup']} warm-up + {result['rounds']} interleaved rounds ({result['settle_ms']:g} ms "
             "idle before each call), median call time.", "",
             f"Machine: {machine_line(result)}", "",
             "\"x baseline\" divides the medians; \"paired\" is the median of the per-round ratios (the baseline's "
             "call over the engine's in the same round: drift between rounds cancels), with its quartiles.", "",
             "| batch | engine | images/s | x baseline | paired (quartiles) | max abs diff vs baseline |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['engine']} | {r['images_per_s']:.2f} | {r['x_baseline']:.2f}x | "
              f"{r['x_baseline_paired']:.2f}x ({r['x_baseline_paired_iqr'][0]:.2f} - "
              f"{r['x_baseline_paired_iqr'][1]:.2f}) | "
              f"{r['max_abs_diff_vs_baseline']:.2e} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
