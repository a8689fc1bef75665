"""FP16 and INT8 accuracy against FP32 on coco_mini: keypoint error, OKS and COCO AP.

Exports the checkpoint's model to ONNX (FP32, simplified as `tokenpose-export` does), converts it
to FP16 (LayerNorm/Softmax in FP32) and INT8 Q/DQ (calibrated on real coco_mini person crops),
runs all three with ONNX Runtime (CPU) on every ground-truth person box of coco_mini (no flip
test), decodes with the codec and reports, against FP32:

* keypoint error in heatmap pixels and in input pixels (heatmap pixels x input/heatmap stride);
* OKS between the reduced-precision and the FP32 predictions (COCO sigmas, annotation areas);
* COCO keypoint AP of each precision against the ground truth (pycocotools, GT boxes).

INT8 is calibrated on the persons of every other image (sorted by id); OKS is also given on the
other half, which calibration never saw.

    python benchmarks/precision_coco_mini.py                      # newest overfit checkpoint
    python benchmarks/precision_coco_mini.py --checkpoint benchmarks/results/overfit_s-v2.pth

Writes benchmarks/results/precision_coco_mini_<model>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tokenpose.data.coco import CocoKeypoints
from tokenpose.data.heatmaps import HeatmapCodec
from tokenpose.evaluation.coco import CocoEvaluator
from tokenpose.export.calibration import load_calibration_set
from tokenpose.manifest import library_versions
from tokenpose.export.onnx import (
    check_graph,
    compare_heatmaps,
    export_onnx_model,
    ort_session,
    run_session,
    simplify_graph,
    verify_against_torch,
)
from tokenpose.export.precision import Int8Settings, convert_fp16, int8_on_fp16, quantize_int8
from tokenpose.files import atomic_write
from tokenpose.models import create_model
from tokenpose.models.checkpoints import read_checkpoint
from tokenpose.models.config import get_config

COCO_MINI = ROOT / "tests" / "fixtures" / "coco_mini"
ANN = COCO_MINI / "annotations" / "person_keypoints_mini.json"
RESULTS = ROOT / "benchmarks" / "results"


def find_checkpoint(given: Path | None) -> Path | None:
    """The checkpoint to measure: `given`, else overfit_s-v2.pth, else the newest overfit_*.pth."""
    if given is not None:
        return given
    preferred = RESULTS / "overfit_s-v2.pth"
    if preferred.is_file():
        return preferred
    found = sorted(RESULTS.glob("overfit_*.pth"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load_model(checkpoint: Path | None, variant: str):
    """(model, config, description) from a checkpoint (its `model_config` when it stores one)."""
    if checkpoint is None:
        cfg = get_config(variant)
        return create_model(cfg), cfg, "random init (no checkpoint found: figures are meaningless)"
    ckpt = read_checkpoint(checkpoint)
    if isinstance(ckpt, dict) and "model_config" in ckpt:
        from tokenpose.training.checkpointing import model_config_from_checkpoint

        cfg = model_config_from_checkpoint(ckpt)
    else:
        cfg = get_config(variant)
    return create_model(cfg, checkpoint), cfg, str(checkpoint.relative_to(ROOT) if checkpoint.is_absolute()
                                                    and ROOT in checkpoint.parents else checkpoint)


def eval_crops(cfg):
    """Every GT person of coco_mini as the evaluation pipeline crops it (no augmentation)."""
    ds = CocoKeypoints(ANN, COCO_MINI / "images", input_hw=cfg.input_hw, heatmap_hw=cfg.heatmap_hw,
                       sigma=cfg.sigma, train=False)
    items = [ds[i] for i in range(len(ds))]
    images = np.stack([np.asarray(it["image"]) for it in items]).astype(np.float32)
    centers = np.stack([np.asarray(it["center"]) for it in items]).astype(np.float64)
    scales = np.stack([np.asarray(it["scale"]) for it in items]).astype(np.float64)
    image_ids = np.asarray([int(it["image_id"]) for it in items])
    box_scores = np.asarray([float(it["box_score"]) for it in items])
    areas_by_ann = {a["id"]: a["area"] for a in json.loads(ANN.read_text())["annotations"]}
    areas = np.asarray([areas_by_ann[int(a)] for a in ds.records.ann_ids], dtype=np.float64)
    return images, centers, scales, image_ids, box_scores, areas


def coco_ap(heatmaps, cfg, centers, scales, image_ids, box_scores) -> dict:
    codec = HeatmapCodec.from_config(cfg)
    kpts, maxvals = codec.decode(heatmaps, centers, scales)
    ev = CocoEvaluator(str(ANN))
    ev.add(image_ids, kpts, maxvals, centers, scales, box_scores)
    return ev.evaluate()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--variant", default="s-v2", help="used when the checkpoint stores no model_config")
    p.add_argument("--calib-size", type=int, default=64)
    p.add_argument("--int8-method", default="minmax", choices=("minmax", "percentile", "entropy"))
    p.add_argument("--quantize-attention", action="store_true")
    p.add_argument("--quantize-head", action="store_true")
    p.add_argument("--fp16-head-fp32", action="store_true")
    p.add_argument("--out-json", type=Path, default=None)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    ckpt = find_checkpoint(args.checkpoint)
    model, cfg, ckpt_desc = load_model(ckpt, args.variant)
    print(f"model {cfg.name} ({cfg.input_hw[0]}x{cfg.input_hw[1]}), weights: {ckpt_desc}", flush=True)

    proto = export_onnx_model(model)
    check_graph(proto)
    proto, _ = simplify_graph(proto)
    parity = verify_against_torch(model, proto, batches=(1, 2))
    print(f"fp32 ONNX vs PyTorch: max |diff| {parity.max_abs:.2e}", flush=True)

    images, centers, scales, image_ids, box_scores, areas = eval_crops(cfg)
    all_ids = sorted(set(image_ids.tolist()))
    held_out = set(all_ids[1::2])
    calib = load_calibration_set(ANN, cfg, max_samples=args.calib_size, exclude_image_ids=sorted(held_out))
    print(f"{len(images)} persons on {len(all_ids)} images; INT8 calibrated on {len(calib)} crops "
          f"of {len(all_ids) - len(held_out)} images", flush=True)

    fp16, fp16_info = convert_fp16(proto, keep_head_fp32=args.fp16_head_fp32)
    int8, int8_info = quantize_int8(proto, calib, settings=Int8Settings(
        method=args.int8_method, quantize_attention=args.quantize_attention, quantize_head=args.quantize_head))

    # the GPU INT8 model (Q/DQ on the FP16 base, what TensorRT engines are built from), run here on the CPU
    int8_fp16, _ = int8_on_fp16(int8, keep_head_fp32=args.fp16_head_fp32)
    names = ("fp32", "fp16", "int8", "int8-fp16")

    heatmaps = {}
    for name, m in zip(names, (proto, fp16, int8, int8_fp16)):
        t = time.perf_counter()
        heatmaps[name] = run_session(ort_session(m), images, batch_size=16)
        print(f"{name}: ran {len(images)} crops in {time.perf_counter() - t:.1f} s", flush=True)

    held = np.array([i in held_out for i in image_ids])
    rows = []
    for name in names:
        stats = coco_ap(heatmaps[name], cfg, centers, scales, image_ids, box_scores)
        row = {"precision": name, "AP": stats["AP"], "AP50": stats["AP50"], "AR": stats["AR"]}
        if name != "fp32":
            agree = compare_heatmaps(heatmaps["fp32"], heatmaps[name], cfg, centers=centers, scales=scales,
                                     areas=areas)
            agree_held = compare_heatmaps(heatmaps["fp32"][held], heatmaps[name][held], cfg,
                                          centers=centers[held], scales=scales[held], areas=areas[held])
            row.update(agree.to_dict())
            row["oks_mean_held_out"] = agree_held.oks_mean
        rows.append(row)

    stride = cfg.input_hw[1] / cfg.heatmap_hw[1]
    lines = [
        (f"| precision | kpt err vs FP32, heatmap px (mean / max) | input px (mean, x{stride:g}) "
         "| OKS vs FP32 (mean / min) | OKS vs FP32, held-out | max abs heatmap diff | AP | AP50 | AR |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["precision"] == "fp32":
            lines.append(f"| fp32 | - | - | - | - | - | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AR']:.3f} |")
        else:
            lines.append(
                f"| {r['precision']} | {r['kpt_mean_px']:.3f} / {r['kpt_max_px']:.2f} | {r['kpt_mean_input_px']:.3f} "
                f"| {r['oks_mean']:.4f} / {r['oks_min']:.3f} | {r['oks_mean_held_out']:.4f} | {r['max_abs']:.2e} "
                f"| {r['AP']:.3f} | {r['AP50']:.3f} | {r['AR']:.3f} |")
    table = "\n".join(lines)
    print(table)

    result = {
        "model": cfg.name, "input_hw": list(cfg.input_hw), "heatmap_hw": list(cfg.heatmap_hw),
        "checkpoint": ckpt_desc, "persons": len(images), "images": len(all_ids),
        "held_out_images": len(held_out), "flip_test": False, "runtime": "onnxruntime CPU",
        "fp32_vs_torch_max_abs": parity.max_abs, "rows": rows, "fp16": fp16_info,
        "int8": int8_info, "versions": library_versions(),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "seconds": time.perf_counter() - t0, "markdown": table,
    }
    out = args.out_json or RESULTS / f"precision_coco_mini_{cfg.name}.json"
    with atomic_write(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
