"""The torch path side by side: eager attention before/after SDPA and with the fused CPU kernel
(tokenpose::attention), torch.compile, AOTInductor packages (Inductor settings, SDPA or the fused
kernel), and the ONNX FP32 model in ONNX Runtime, on one machine.

Every engine gets the same seeded input; the timed calls are interleaved round by round (engine A,
B, C, A, B, C, ...) so that load from other processes hits them all alike. Figures are images/s
(batch / median call time) and ratios to the ONNX FP32 model measured in the same rounds.

"before" is the explicit attention this repository used until issue 13 (q k^T, softmax, @ v, the
(B, heads, N, N) matrix stored), applied here to a second copy of the same weights.

    .venv/bin/python benchmarks/torch_path.py --variant s-v2 --batches 1,8,32 \
        --out benchmarks/results/torch_path_s-v2
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import types
from pathlib import Path

import numpy as np
import torch

from tokenpose.bench.provenance import collect_provenance
from tokenpose.bench.report import machine_line
from tokenpose.bench.timing import interleaved_call_times
from tokenpose.engines.aoti_engine import AotiEngine
from tokenpose.engines.onnx_engine import OnnxEngine
from tokenpose.engines.torch_engine import TorchEngine
from tokenpose.export.aoti import export_aoti
from tokenpose.export.onnx import export_onnx_model, op_counts
from tokenpose.export.pipeline import ExportOptions, export_model
from tokenpose.files import atomic_write
from tokenpose.models import create_model
from tokenpose.models.checkpoints import save_weights
from tokenpose.models.layers import Attention

# name (no commas: --aoti takes a comma list) -> (Inductor settings, attention through tokenpose::attention)
AOTI_CONFIGS = {
    "aoti no options (SDPA)": ({}, False),
    "aoti freezing (SDPA)": ({"freezing": True}, False),
    "aoti freezing (fused attention)": ({"freezing": True}, True),
    "aoti freezing + max-autotune (fused attention)": ({"freezing": True, "max_autotune": True}, True),
}
DEFAULT_AOTI = ("aoti freezing (SDPA)", "aoti freezing (fused attention)")


def explicit_attention(self: Attention, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
    """The pre-SDPA forward: the (B, heads, N, N) probabilities are materialised."""
    assert queries is None, "the explicit attention runs on a reference-form model (every token queries)"
    b, n, dim = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
    out = torch.matmul(self.probabilities(qkv[0], qkv[1]), qkv[2])
    return self.proj(out.transpose(1, 2).reshape(b, n, dim))


def with_explicit_attention(model: torch.nn.Module) -> torch.nn.Module:
    """`model` as it computed before issue 13: explicit attention, every token of every layer."""
    model.reference_form = True
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = types.MethodType(explicit_attention, m)
    return model


def build_engines(variant: str, work: Path, aoti: list[str], max_batch: int, threads: int, log) -> dict:
    """name -> engine callable ((B, 3, H, W) float32 -> heatmaps), plus what was built."""
    work.mkdir(parents=True, exist_ok=True)
    pth = work / f"{variant}.pth"
    torch.manual_seed(0)
    model = create_model(variant).eval()
    save_weights(model, pth, variant=variant, random_weights=True)
    explicit = with_explicit_attention(create_model(variant, pth))
    engines = {
        "torch eager, explicit attention (before)": TorchEngine(explicit, fused_attention=False),
        "torch eager, SDPA": TorchEngine(create_model(variant, pth), fused_attention=False),
        "torch eager, fused attention": TorchEngine(create_model(variant, pth), fused_attention=True),
        "torch.compile (freezing), SDPA": TorchEngine(create_model(variant, pth), compile=True, fused_attention=False),
        "torch.compile (freezing), fused attention": TorchEngine(create_model(variant, pth), compile=True,
                                                                 fused_attention=True),
    }
    summary = export_model(ExportOptions(variant=variant, out_dir=work, checkpoint=pth, engine=False,
                                         batch=f"1:8:{max_batch}"), log=log)
    onnx_path = summary.artifacts[0].path
    engines["onnx fp32"] = OnnxEngine.from_file(onnx_path, device="cpu", threads=threads or None)
    engines["onnx fp32, explicit attention (before)"] = _plain_onnx(
        with_explicit_attention(create_model(variant, pth)), work / f"{variant}_explicit.onnx", threads)
    info = {"onnx_ops": _ops(onnx_path), "aoti_compile_s": {}}
    for name in aoti:
        pt2 = work / f"{variant}_{re.sub(r'[^a-z0-9]+', '_', name)}_b{max_batch}.pt2"
        if not pt2.is_file():
            configs, fused = AOTI_CONFIGS[name]
            done = export_aoti(create_model(variant, pth), pt2, batch=f"1:8:{max_batch}",
                               inductor_configs=configs, fused_attention=fused, log=log)
            info["aoti_compile_s"][name] = done.report["compile_s"]
        engines[name] = AotiEngine.from_file(pt2)
    return engines, info


def _plain_onnx(model: torch.nn.Module, path: Path, threads: int):
    """An ONNX Runtime session of `model`'s plain export (no simplification), as an engine callable."""
    import onnxruntime as ort

    path.write_bytes(export_onnx_model(model).SerializeToString())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def _ops(path: Path) -> dict[str, int]:
    import onnx

    return op_counts(onnx.load(str(path), load_external_data=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="s-v2")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads of torch and ONNX Runtime (0: default)")
    ap.add_argument("--aoti", default=",".join(DEFAULT_AOTI), help=f"AOTI packages to compare: {', '.join(AOTI_CONFIGS)}")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/tokenpose_torch_path"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/torch_path_s-v2"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    aoti = [a.strip() for a in args.aoti.split(",") if a.strip()]
    unknown = [a for a in aoti if a not in AOTI_CONFIGS]
    if unknown:
        raise SystemExit(f"--aoti: unknown package(s) {unknown}; known: {', '.join(AOTI_CONFIGS)}")
    log = lambda m: print(m, flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    provenance = collect_provenance()
    engines, info = build_engines(args.variant, args.work_dir, aoti, max(batches), args.threads, log)
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, *engines["onnx fp32"].meta.input_hw)).astype(np.float32)
        samples, _ = interleaved_call_times({name: lambda e=e: e(x) for name, e in engines.items()}, args.rounds)
        onnx_ips = batch / statistics.median(samples["onnx fp32"])
        for name, s in samples.items():
            ips = batch / statistics.median(s)
            rows.append({"engine": name, "batch": batch, "median_ms": statistics.median(s) * 1e3,
                         "min_ms": min(s) * 1e3, "images_per_s": ips, "x_onnx_fp32": ips / onnx_ips})
            log(f"batch {batch:3d}  {name:<42} {ips:7.2f} img/s  {ips / onnx_ips:5.2f}x onnx fp32")
    provenance["load_average"]["end"] = list(__import__("os").getloadavg())
    result = {"variant": args.variant, "rounds": args.rounds, "threads": args.threads, "rows": rows, "provenance": provenance, **info}
    write(result, args.out)


def write(result: dict, out: Path) -> None:
    lines = [f"# Torch path: {result['variant']}, interleaved, median of {result['rounds']} calls", "",
             machine_line(result), "",
             "| engine | batch | median ms | images/s | x ONNX FP32 | x batch 1 (img/s) |", "|---|---:|---:|---:|---:|---:|"]
    first = {r["engine"]: r["images_per_s"] for r in result["rows"] if r["batch"] == min(x["batch"] for x in result["rows"])}
    for r in result["rows"]:
        lines.append(f"| {r['engine']} | {r['batch']} | {r['median_ms']:.1f} | {r['images_per_s']:.2f} | "
                     f"{r['x_onnx_fp32']:.2f} | {r['images_per_s'] / first[r['engine']]:.2f} |")
    lines += ["", f"ONNX FP32 graph ops: {result['onnx_ops']}"]
    with atomic_write(out.with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=1)
    with atomic_write(out.with_suffix(".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
