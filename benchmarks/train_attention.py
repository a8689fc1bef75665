"""Training steps/s with the explicit attention (before issue 13) and with SDPA, side by side.

One training step = forward, JointsMSELoss, backward, Adam step (the official optimiser, lr 1e-3),
on seeded random inputs and Gaussian-free random targets (the speed does not depend on them). The
two models hold the same weights; their steps are interleaved so load from other processes hits
both alike. Writes JSON + markdown with the CPU recorded.

    .venv/bin/python benchmarks/train_attention.py --variant s-v2 --batch 8 --steps 6 \
        --out benchmarks/results/train_attention_s-v2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch_path import with_explicit_attention

from tokenpose.bench.provenance import collect_provenance
from tokenpose.bench.report import machine_line
from tokenpose.bench.results import write_result_files
from tokenpose.models import create_model
from tokenpose.training.loss import JointsMSELoss


def make_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor):
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = JointsMSELoss()

    def step() -> float:
        t0 = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        criterion(model(x), target, weight).backward()
        optimiser.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="s-v2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_attention_s-v2"))
    args = ap.parse_args()
    torch.manual_seed(0)
    state = create_model(args.variant).state_dict()
    cfg = create_model(args.variant).config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, *cfg.input_hw, generator=gen).to(args.device)
    target = torch.rand(args.batch, cfg.num_joints, *cfg.heatmap_hw, generator=gen).to(args.device)
    weight = torch.ones(args.batch, cfg.num_joints, 1, device=args.device)
    models = {"explicit attention (before)": with_explicit_attention(create_model(args.variant)),
              "SDPA": create_model(args.variant)}
    steps = {}
    for name, model in models.items():
        model.load_state_dict(state)
        steps[name] = make_step(model.to(args.device), x, target, weight)
        steps[name]()  # warm-up: allocator, first-call dispatch
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            time.sleep(0.05)
            samples[name].append(step())
    rows = [{"attention": name, "median_s_per_step": statistics.median(s), "steps_per_s": 1 / statistics.median(s),
             "images_per_s": args.batch / statistics.median(s)} for name, s in samples.items()]
    before = rows[0]["steps_per_s"]
    provenance = collect_provenance()
    lines = [(f"# Training steps/s, {args.variant}, batch {args.batch}, {args.device}, median of {args.steps} "
              "interleaved steps"), "",
             machine_line({"provenance": provenance}), "",
             "| attention | s/step | steps/s | images/s | x before |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['attention']} | {r['median_s_per_step']:.2f} | {r['steps_per_s']:.3f} | "
              f"{r['images_per_s']:.2f} | {r['steps_per_s'] / before:.2f} |" for r in rows]
    write_result_files(args.out, {"variant": args.variant, "batch": args.batch, "device": args.device, "rows": rows,
                                  "provenance": provenance}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
