"""Images/s of `tokenpose predict --ray` with 1 and 2 engine workers, beside the local predict, on the
coco_mini images with their ground-truth person boxes, in one run on one machine; plus the Ray timeline.

    python benchmarks/batch_scaling.py [--variant s-v2] [--workers 1,2] [--batch 8]

Exports the variant to ONNX FP32 (random weights: speed does not depend on them), runs the local job
once and the Ray job once per worker count (all drawing off), checks every Ray run's results equal the
local run's, and writes `benchmarks/results/batch_scaling_<variant>.json` / `.md` and the last Ray
run's timeline (`batch_scaling_<variant>_timeline.json`, open it in chrome://tracing or Perfetto).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_load import export  # noqa: E402 - the same export as the serving benchmark

COCO = ROOT / "tests" / "fixtures" / "coco_mini"
RESULTS = ROOT / "benchmarks" / "results"


def gt_boxes(path: Path) -> Path:
    ann = json.loads((COCO / "annotations" / "person_keypoints_mini.json").read_text())
    path.write_text(json.dumps([{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
                                for a in ann["annotations"] if a["num_keypoints"] > 0]))
    return path


def keypoints(out: Path) -> np.ndarray:
    rows = sorted(json.loads((out / "results.json").read_text()), key=lambda r: (r["file_name"], r["bbox"]))
    return np.array([r["keypoints"] for r in rows])


def main() -> None:
    import ray

    from tokenpose.bench.provenance import collect_provenance
    from tokenpose.engines import PosePredictor, load_engine
    from tokenpose.predict import BoxSource, PredictJob
    from tokenpose.serving.batch_job import RayOptions, run_on_ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="s-v2")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        engine, boxes = export(args.variant, tmp), BoxSource(gt_boxes(tmp / "boxes.json"))

        def job(name: str) -> PredictJob:
            return PredictJob(COCO / "images", tmp / name, boxes=boxes, draw=False)

        start = time.perf_counter()
        summary = job("local").run(PosePredictor(load_engine(engine), batch_size=args.batch), warn=lambda _m: None)
        rows.append({"mode": "local", "workers": None, "images": summary.frames, "people": summary.people,
                     "seconds": time.perf_counter() - start})
        reference = keypoints(tmp / "local")
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            for workers in (int(w) for w in args.workers.split(",")):
                name = f"ray{workers}"
                start = time.perf_counter()
                summary = run_on_ray(job(name), RayOptions(engine=engine, workers=workers, batch=args.batch),
                                     warn=lambda _m: None)
                seconds = time.perf_counter() - start
                same = bool(np.allclose(keypoints(tmp / name), reference, atol=1e-6))
                rows.append({"mode": "ray", "workers": workers, "images": summary.frames, "people": summary.people,
                             "seconds": seconds, "equal_to_local": same})
                print(rows[-1], flush=True)
            timeline = args.out / f"batch_scaling_{args.variant}_timeline.json"
            args.out.mkdir(parents=True, exist_ok=True)
            ray.timeline(filename=str(timeline))
        finally:
            ray.shutdown()
    for r in rows:
        r["images_per_s"] = r["images"] / r["seconds"]
    info = {"variant": args.variant, "batch": args.batch, "provenance": collect_provenance()}
    base = rows[0]["images_per_s"]
    lines = [f"# predict --ray scaling: {args.variant} ONNX FP32, batch {args.batch}, coco_mini (70 images, GT boxes)",
             "", f"CPU: {info['provenance']['cpu']['model']}, {info['provenance']['cpu']['logical_cores']} cores, "
             f"flags {' '.join(info['provenance']['cpu']['flags'])}", "",
             "| mode | workers | images | people | s | img/s | x local | results = local |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['workers'] or '-'} | {r['images']} | {r['people']} | {r['seconds']:.1f} | "
                     f"{r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f} | {r.get('equal_to_local', '-')} |")
    text = "\n".join(lines) + "\n"
    stem = args.out / f"batch_scaling_{args.variant}"
    stem.with_suffix(".json").write_text(json.dumps({"info": info, "rows": rows}, indent=2, default=str))
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
