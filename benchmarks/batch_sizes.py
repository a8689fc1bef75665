"""Per-image throughput of CPU engines at several batch sizes, the batch sizes interleaved call by call.

`tokenpose-bench` times one batch size after another, so a machine whose speed drifts over minutes
(a shared VM) bends the batch-8 / batch-1 ratios it reports. Here every round calls each engine at
each batch size in turn (engine A at 1, 8, 32, engine B at 1, 8, 32, ...), with an idle pause before
each call, and the ratios come from the same rounds. Minor page faults per image are counted too:
they are what the malloc policy of the PyTorch-based engines removes (`tokenpose.engines.cpu`).

    .venv/bin/python benchmarks/batch_sizes.py --engine model.pth --engine model.pth:micro_batch=0 \
        --engine engines/tokenpose_s-v2_fp32.pt2 --engine engines/tokenpose_s-v2_fp32.onnx \
        --batches 1,8,32 --rounds 9 --out benchmarks/results/batch_sizes_s-v2

An engine is a file with optional `load_engine` options after a colon (`x.pth:compile=1`,
`x.pth:micro_batch=0`; integers are parsed, 0 for micro_batch means whole batches).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np

from tokenpose.bench.provenance import collect_provenance
from tokenpose.bench.report import machine_line
from tokenpose.bench.results import write_result_files
from tokenpose.bench.timing import interleaved_call_times
from tokenpose.engines.base import load_engine


def open_engine(spec: str, threads: int):
    path, _, opts = spec.partition(":")
    options = {k: int(v) if v.lstrip("-").isdigit() else v for k, v in (o.split("=") for o in opts.split(",") if o)}
    if path.endswith(".onnx"):
        options.setdefault("threads", threads)
        options.setdefault("device", "cpu")
    engine = load_engine(path, **options)
    label = f"{Path(path).parent.name}/{Path(path).name}{' (' + opts + ')' if opts else ''}"
    return label, engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", action="append", required=True, help="FILE[:option=value,...] (repeatable)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settle-ms", type=float, default=50.0)
    ap.add_argument("--out", type=Path, required=True, help="results prefix: writes PREFIX.json and PREFIX.md")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    engines = dict(open_engine(spec, args.threads) for spec in args.engine)
    batches = [int(b) for b in args.batches.split(",")]
    hw = next(iter(engines.values())).meta.input_hw
    inputs = {b: np.random.default_rng(b).standard_normal((b, 3, *hw)).astype(np.float32) for b in batches}
    provenance = collect_provenance(threads=args.threads)
    # Two untimed rounds first: compiled graphs, allocator and arena growth.
    times, faults = interleaved_call_times(
        {(name, b): (lambda e=engine, x=inputs[b]: e(x)) for name, engine in engines.items() for b in batches},
        args.rounds, warmup=2, settle_ms=args.settle_ms,
        on_round=lambda r: print(f"round {r}/{args.rounds}", flush=True))
    provenance["load_average"]["end"] = list(os.getloadavg())

    rows = []
    for name in engines:
        base = 1 / statistics.median(times[(name, batches[0])]) * batches[0]
        for b in batches:
            ips = b / statistics.median(times[(name, b)])
            rows.append({"engine": name, "batch": b, "images_per_s": ips,
                         "best_images_per_s": b / min(times[(name, b)]), f"x_batch_{batches[0]}": ips / base,
                         "minor_faults_per_image": faults[(name, b)] / b / args.rounds, "seconds": times[(name, b)]})
    result = {"engines": args.engine, "batches": batches, "rounds": args.rounds, "threads": args.threads,
              "settle_ms": args.settle_ms, "malloc": os.environ.get("TOKENPOSE_MALLOC") or "retain (default)",
              "rows": rows, "provenance": provenance}
    table = markdown(result)
    write_result_files(args.out, result, table)
    print(table)


def markdown(result: dict) -> str:
    first = result["batches"][0]
    lines = [f"{result['rounds']} rounds, batch sizes {', '.join(map(str, result['batches']))} interleaved call by "
             f"call ({result['settle_ms']:g} ms idle before each call), {result['threads']} threads, median call time; "
             f"malloc policy: {result['malloc']}.", "",
             f"Machine: {machine_line(result)}", "",
             f"| engine | batch | images/s (median) | images/s (best call) | x batch {first} "
             "| minor page faults / image |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['engine']} | {r['batch']} | {r['images_per_s']:.2f} | {r['best_images_per_s']:.2f} | "
              f"{r[f'x_batch_{first}']:.2f} | {r['minor_faults_per_image']:.0f} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
