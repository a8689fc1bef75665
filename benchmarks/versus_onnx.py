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
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from tokenpose.bench.provenance import collect_provenance
from tokenpose.bench.timing import interleaved_call_times
from tokenpose.engines.onnx_engine import OnnxEngine
from tokenpose.files import atomic_write

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
    ap.add_argument("--engine", type=Path, action="append", required=True, help="our ONNX artifact (repeatable)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--settle-ms", type=float, default=50.0, help="idle pause before each timed call")
    ap.add_argument("--out", type=Path, required=True, help="results prefix: writes PREFIX.json and PREFIX.md")
    args = ap.parse_args()

    engines: dict = {"baseline": Baseline(args.baseline, args.threads)}
    for path in args.engine:
        engine = OnnxEngine.from_file(path, device="cpu", threads=args.threads)
        engines[f"tokenpose {engine.precision}"] = engine
    meta = next(e for e in engines.values() if isinstance(e, OnnxEngine)).meta
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
            row.update(images_per_s=ips, x_baseline=ips / base, median_ms=1e3 * statistics.median(times[row["engine"]]))
        for row in rows[-len(engines):]:
            print(f"batch {batch:3d}  {row['engine']:<18} {row['images_per_s']:7.2f} img/s  "
                  f"x baseline {row['x_baseline']:.2f}  max|diff| {row['max_abs_diff_vs_baseline']:.2e}")

    provenance = collect_provenance(threads=args.threads)
    result = {"baseline": str(args.baseline), "engines": [str(p) for p in args.engine], "threads": args.threads,
              "warmup": args.warmup, "rounds": args.rounds, "settle_ms": args.settle_ms, "rows": rows, "provenance": provenance}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=2)
    with atomic_write(args.out.with_suffix(".md"), "w") as f:
        f.write(markdown(result))


def markdown(result: dict) -> str:
    """The results table with the machine it was measured on."""
    cpu, versions = result["provenance"]["cpu"], result["provenance"]["versions"]
    lines = [f"Baseline: `{Path(result['baseline']).name}` in a plain ONNX Runtime session; {result['threads']} threads, "
             f"{result['warmup']} warm-up + {result['rounds']} interleaved rounds ({result['settle_ms']:g} ms idle before "
             "each call), median call time.", "",
             f"Machine: {cpu['model']}, {cpu['affinity_cores']} of {cpu['logical_cores']} logical cores "
             f"({', '.join(cpu['flags'])}); onnxruntime {versions['onnxruntime']}, torch {versions['torch']}; "
             f"1-min load average at start {result['provenance']['load_average']['start'][0]:.2f}.", "",
             "| batch | engine | images/s | x baseline | max abs diff vs baseline |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['engine']} | {r['images_per_s']:.2f} | {r['x_baseline']:.2f}x | "
              f"{r['max_abs_diff_vs_baseline']:.2e} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
