"""COCO AP of one checkpoint through every engine, and each engine's parity with PyTorch FP32.

    python benchmarks/engines_coco_mini.py                      # benchmarks/results/overfit_*.pth
    python benchmarks/engines_coco_mini.py --checkpoint x.pth --flip

Exports the checkpoint to ONNX FP32, FP16 and INT8 (calibrated on coco_mini crops) and, where
TensorRT imports and a GPU is present, to TensorRT engines; then evaluates on coco_mini with the
ground-truth boxes: PyTorch FP32 (the reference), PyTorch BF16 autocast, every ONNX model on
ONNX Runtime and every engine. All engines see the same crops in one pass over the data.
Writes benchmarks/results/engines_coco_mini.json and .md (the table for benchmarks/README.md).
Note: the INT8 model is calibrated on crops of the same images it is evaluated on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COCO_MINI = ROOT / "tests" / "fixtures" / "coco_mini"
RESULTS = ROOT / "benchmarks" / "results"


def find_checkpoint(given: Path | None) -> Path:
    if given is not None:
        return given
    found = sorted(RESULTS.glob("overfit_*.pth"))
    if not found:
        sys.exit(f"no checkpoint given and none in {RESULTS}: run benchmarks/overfit_coco_mini.py first")
    return found[0]


def machine() -> dict:
    import onnxruntime
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "ort_providers": onnxruntime.get_available_providers(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def markdown(rows: list[dict], checkpoint: str, persons: int, images: int, flip: bool) -> str:
    lines = [
        (f"checkpoint `{checkpoint}`, coco_mini, {persons} persons in {images} images, ground-truth boxes"
         + (", flip test" if flip else "") + "; parity against PyTorch FP32 on the same crops"),
        "",
        "| engine | precision | AP | AP50 | AP75 | ΔAP | max \\|Δheatmap\\| | kpt err mean / max (px) "
        "| kpt err, score > 0.2, mean / max (px) | OKS mean / min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        p = r.get("parity")
        if p is None:
            parity = "reference | - | - | - | -"
        else:
            parity = (f"{p['metric_delta']['AP'] * 100:+.2f} | {p['heatmap_max_abs']:.2e} | "
                      f"{p['kpt_mean_px']:.4f} / {p['kpt_max_px']:.4f} | "
                      f"{p['kpt_confident_mean_px']:.4f} / {p['kpt_confident_max_px']:.4f} | "
                      f"{p['oks_mean']:.5f} / {p['oks_min']:.5f}")
        lines.append(f"| {r['label']} | {r['precision']} | {m['AP'] * 100:.2f} | {m['AP50'] * 100:.2f} | "
                     f"{m['AP75'] * 100:.2f} | {parity} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from tokenpose.engines.base import load_engine
    from tokenpose.engines.torch_engine import checkpoint_config
    from tokenpose.evaluation.runner import compare_engines, open_dataset
    from tokenpose.export.pipeline import ExportOptions, export_model
    from tokenpose.models.checkpoints import read_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--flip", action="store_true", help="official flip test")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--calib-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    checkpoint = find_checkpoint(args.checkpoint)
    cfg = checkpoint_config(read_checkpoint(checkpoint), str(checkpoint))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = export_model(ExportOptions(
            variant=cfg, out_dir=Path(tmp), checkpoint=checkpoint, fp16=True, int8=True,
            calib_data=COCO_MINI / "annotations" / "person_keypoints_mini.json", calib_size=args.calib_size,
            verify_batches=(1, 4)), log=lambda m: print(m, file=sys.stderr))
        reference = load_engine(checkpoint)
        engines = [("PyTorch", load_engine(checkpoint, precision="bf16"))]
        engines += [("ONNX Runtime CPU" if a.format == "onnx" else "TensorRT", load_engine(a.path))
                    for a in summary.artifacts]
        data = open_dataset(COCO_MINI, cfg, max_images=args.max_images)
        reports = compare_engines([e for _, e in engines], reference, data, flip_test=args.flip)

    rows = [{"label": "PyTorch", "backend": "torch", "precision": "fp32",
             "metrics": reports[0].reference_metrics, "parity": None}]
    for (label, engine), rep in zip(engines, reports):
        rows.append({"label": label, "backend": engine.name, "precision": engine.precision,
                     "metrics": rep.test_metrics, "parity": rep.to_dict()})
    ckpt_name = str(checkpoint.relative_to(ROOT) if checkpoint.resolve().is_relative_to(ROOT) else checkpoint)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(), "checkpoint": ckpt_name, "variant": cfg.name,
        "input_hw": list(cfg.input_hw), "persons": len(data.records), "images": data.num_images,
        "flip_test": args.flip, "seconds": time.perf_counter() - t0, "engines": rows,
        "engine_skipped": summary.engine_skipped,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines_coco_mini.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows, ckpt_name, len(data.records), data.num_images, args.flip)
    if summary.engine_skipped:
        table += f"\nTensorRT: not run ({summary.engine_skipped}).\n"
    (args.out / "engines_coco_mini.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
