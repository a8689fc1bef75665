"""Frames/s of detect + pose + track (+ draw) over a video made from coco_mini people, at 1 and 8 people
per frame and `--det-every 1` vs `5`, with the share of time in each stage, in one run on one machine.

    python benchmarks/video_pipeline.py [--frames 60] [--pose benchmarks/results/overfit_t-mini.pth]

The video: each frame is a mosaic of 1 or 8 tiles, each tile a real coco_mini person crop (the person
changes every 10 frames), written as an MJPG .avi. The detector is the ONNX test fixture
`tests/fixtures/detectors/yolo_tiny.onnx` (a real YOLOv8-format graph with random weights, so its
boxes mean nothing): it runs on every detection frame for its cost, and the boxes it answers with
are the tiles' person boxes, so that the people per frame are what the row says. The pose model is
the overfit checkpoint (real, peaked heatmaps, so `--det-every` can carry boxes from keypoints),
run with ONNX Runtime FP32 after a fresh export. Each stage is timed by wrapping it; "other" is
video decode/encode, queueing and results. Writes benchmarks/results/video_pipeline.json / .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "tests" / "fixtures" / "coco_mini"
DETECTOR = ROOT / "tests" / "fixtures" / "detectors" / "yolo_tiny.onnx"
RESULTS = ROOT / "benchmarks" / "results"
FRAME_HW = (480, 640)
LAYOUTS = {1: (1, 1), 8: (2, 4)}  # people -> (rows, cols) of tiles


def person_crops(limit: int = 24) -> list[np.ndarray]:
    """Ground-truth person crops of coco_mini (boxes padded by 10%), tall enough to be seen."""
    ann = json.loads((COCO / "annotations" / "person_keypoints_mini.json").read_text())
    names = {im["id"]: im["file_name"] for im in ann["images"]}
    crops = []
    for a in ann["annotations"]:
        x, y, w, h = a["bbox"]
        if a["num_keypoints"] < 10 or h < 150:
            continue
        image = cv2.imread(str(COCO / "images" / names[a["image_id"]]))
        x0, y0 = max(0, int(x - 0.1 * w)), max(0, int(y - 0.1 * h))
        crops.append(image[y0:int(y + 1.1 * h), x0:int(x + 1.1 * w)])
        if len(crops) == limit:
            break
    return crops


def write_video(path: Path, people: int, frames: int, crops: list[np.ndarray]) -> np.ndarray:
    """The mosaic video; returns the person boxes (people, 4) x, y, w, h every frame shares."""
    rows, cols = LAYOUTS[people]
    th, tw = FRAME_HW[0] // rows, FRAME_HW[1] // cols
    ph, pw = int(th * 0.9), min(int(th * 0.9 * 0.5), int(tw * 0.9))  # a person tile: 1:2
    boxes = []
    for r in range(rows):
        for c in range(cols):
            boxes.append([c * tw + (tw - pw) / 2, r * th + (th - ph) / 2, pw, ph])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, FRAME_HW[::-1])
    for k in range(frames):
        frame = np.full((*FRAME_HW, 3), 96, np.uint8)
        for i, (x, y, w, h) in enumerate(boxes):
            crop = crops[(i + k // 10) % len(crops)]
            frame[int(y):int(y) + int(h), int(x):int(x) + int(w)] = cv2.resize(crop, (int(w), int(h)))
        writer.write(frame)
    writer.release()
    return np.array(boxes, dtype=np.float64)


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
        return timed


class ScriptedDetector:
    """Runs the real ONNX detector for its cost, answers with the known person boxes."""

    def __init__(self, detector, boxes: np.ndarray, timer: Timer) -> None:
        self.detector, self.timer = detector, timer
        self.rows = np.concatenate([boxes, np.full((len(boxes), 1), 0.9)], axis=1)

    def detect(self, images):
        start = time.perf_counter()
        self.detector.detect(images)
        self.timer.seconds["detection"] += time.perf_counter() - start
        return [self.rows.copy() for _ in images]


def run_once(video: Path, out: Path, pose_engine: Path, boxes: np.ndarray, det_every: int) -> dict:
    import tokenpose.predict.run as run_module
    from tokenpose.engines import PosePredictor, load_engine
    from tokenpose.predict import PredictJob, load_detector
    from tokenpose.predict.tracking import PersonTracker, TrackOptions

    timer = Timer()
    predictor = PosePredictor(load_engine(pose_engine))
    predictor.predict = timer.wrap("pose", predictor.predict)
    original_update, original_draw = PersonTracker.update, run_module.draw_results
    PersonTracker.update = timer.wrap("tracking", original_update)
    run_module.draw_results = timer.wrap("drawing", original_draw)
    try:
        job = PredictJob(video, out, detector=ScriptedDetector(load_detector(DETECTOR), boxes, timer),
                         tracking=TrackOptions(track=True, det_every=det_every))
        start = time.perf_counter()
        summary = job.run(predictor, warn=lambda _m: None)
        total = time.perf_counter() - start
    finally:
        PersonTracker.update, run_module.draw_results = original_update, original_draw
    shares = {k: v / total for k, v in timer.seconds.items()}
    shares["other"] = 1.0 - sum(shares.values())
    return {"frames": summary.frames, "seconds": total, "fps": summary.frames / total, "people": summary.people,
            "tracks": summary.tracks, "detector_frames": summary.detector_frames, "shares": shares}


def main() -> None:
    from tokenpose.bench.provenance import collect_provenance
    from tokenpose.bench.report import machine_line
    from tokenpose.export.pipeline import ExportOptions, export_model
    from tokenpose.models.checkpoints import read_checkpoint
    from tokenpose.models.config import ModelConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--pose", type=Path, default=RESULTS / "overfit_t-mini.pth")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    crops = person_crops()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = ModelConfig.from_dict(read_checkpoint(args.pose)["model_config"])
        onnx = export_model(ExportOptions(variant=cfg, out_dir=tmp / "pose", checkpoint=args.pose, engine=False,
                                          simplify=False, verify_batches=(1,)), log=lambda _m: None).artifacts[0].path
        for people in (1, 8):
            video = tmp / f"people{people}.avi"
            boxes = write_video(video, people, args.frames, crops)
            for det_every in (1, 5):
                row = run_once(video, tmp / f"out{people}_{det_every}", onnx, boxes, det_every)
                rows.append({"people_per_frame": people, "det_every": det_every, **row})
                print({k: v for k, v in rows[-1].items() if k != "shares"}, flush=True)
    info = {"pose": f"{args.pose.name} ({cfg.name}, {cfg.input_hw[0]}x{cfg.input_hw[1]}) ONNX FP32",
            "detector": DETECTOR.name, "frame_hw": FRAME_HW, "frames": args.frames,
            "provenance": collect_provenance()}
    lines = [f"# Video pipeline: detect + pose + track + draw ({info['pose']}, detector {DETECTOR.name})", "",
             machine_line(info), "",
             "| people/frame | det every | frames/s | detector frames | tracks | detection | pose | tracking | "
             "drawing | other |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["shares"]
        lines.append(f"| {r['people_per_frame']} | {r['det_every']} | {r['fps']:.1f} | {r['detector_frames']} | "
                     f"{r['tracks']} | " + " | ".join(f"{100 * s.get(k, 0):.0f}%" for k in
                                                    ("detection", "pose", "tracking", "drawing", "other")) + " |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "video_pipeline.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2, default=str))
    (args.out / "video_pipeline.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
