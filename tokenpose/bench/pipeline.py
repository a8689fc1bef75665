"""The end-to-end scenario (`--pipeline`): images with N person boxes each through `PosePredictor`
(crop, one engine call, decode), reporting persons/s and the share of time spent outside the engine.

The scenes come from a COCO keypoints json the caller names (`pipeline_scenes`), or are seeded
synthetic images and boxes (`synthetic_scenes`): cropping and decoding cost the same whatever the
pixels show. Images are decoded before timing, so reading files from disk is never counted.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose.bench.preparation import PreparedEngine
from tokenpose.bench.results import PipelineRow, failure_reason
from tokenpose.bench.settings import BenchError
from tokenpose.data.transforms import read_image
from tokenpose.engines.predictor import PosePredictor

__all__ = ["Scene", "pipeline_scenes", "run_pipeline", "synthetic_scenes"]

Scene = tuple[np.ndarray, np.ndarray]  # (BGR uint8 image (H, W, 3), person boxes (N, 4) x, y, w, h in pixels)

# What `synthetic_scenes` draws: a COCO-sized picture, boxes of a standing person's proportions.
_SYNTHETIC_HW = (480, 640)
_BOX_WIDTH_SHARE = (0.08, 0.35)  # of the image width
_BOX_ASPECT = (1.5, 3.0)  # height / width


class _TimedEngine:
    """An Engine that adds up the wall time spent inside the wrapped engine's calls; every other
    attribute (name, precision, sizes, batch range, manifest) is the wrapped engine's."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.engine(images)
        finally:
            self.seconds += time.perf_counter() - t0


def _clip_boxes(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Boxes `(N, 4)` x, y, w, h moved and shrunk to lie inside the image, at least 2 px wide and high."""
    h, w = image_hw
    out = boxes.copy()
    out[:, 0] = np.clip(out[:, 0], 0, w - 2)
    out[:, 1] = np.clip(out[:, 1], 0, h - 2)
    out[:, 2] = np.clip(out[:, 2], 2, w - out[:, 0])
    out[:, 3] = np.clip(out[:, 3], 2, h - out[:, 1])
    return out


def pipeline_scenes(coco_json: str | os.PathLike, persons: int, count: int, seed: int = 0) -> list[Scene]:
    """`count` scenes from a COCO keypoints json whose images lie in `<json folder>/../images/`.

    Images with the most person boxes come first; each image's ground-truth person boxes are
    tiled (and jittered by up to 5% of their size after the first copy) to exactly `persons`.
    """
    path = Path(coco_json)
    data = json.loads(path.read_text())
    boxes: dict[int, list[list[float]]] = {}
    for a in data.get("annotations", []):
        if a.get("iscrowd", 0) or a.get("category_id", 1) != 1:
            continue
        x, y, w, h = a["bbox"]
        if w > 1 and h > 1:
            boxes.setdefault(a["image_id"], []).append([x, y, w, h])
    images = {im["id"]: im for im in data.get("images", [])}
    ranked = sorted((i for i in boxes if i in images), key=lambda i: (-len(boxes[i]), i))
    if not ranked:
        raise BenchError(f"{path}: no person boxes to build pipeline scenes from")
    folder = path.parent.parent / "images"
    rng = np.random.default_rng(seed)
    scenes = []
    for image_id in ranked[:count]:
        image = read_image(folder / images[image_id]["file_name"])
        gt = np.asarray(boxes[image_id], dtype=np.float64)
        tiled = np.resize(gt, (persons, 4))
        jitter = rng.uniform(-0.05, 0.05, (persons, 4)) * tiled[:, [2, 3, 2, 3]]
        jitter[: len(gt)] = 0.0
        scenes.append((image, _clip_boxes(tiled + jitter, image.shape[:2])))
    return scenes


def synthetic_scenes(persons: int, count: int, seed: int = 0) -> list[Scene]:
    """`count` seeded noise images of 480 x 640 pixels, each with `persons` random person-shaped boxes."""
    rng = np.random.default_rng(seed)
    h, w = _SYNTHETIC_HW
    scenes = []
    for _ in range(count):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        bw = rng.uniform(*_BOX_WIDTH_SHARE, persons) * w
        bh = bw * rng.uniform(*_BOX_ASPECT, persons)
        xy = rng.uniform(0.0, 1.0, (persons, 2)) * (np.array([w, h]) - np.stack([bw, bh], axis=1)).clip(0)
        scenes.append((image, _clip_boxes(np.column_stack([xy, bw, bh]), (h, w))))
    return scenes


def run_pipeline(prep: PreparedEngine, variant: str, scenes: list[Scene], persons: int, warmup: int) -> PipelineRow:
    """Time `PosePredictor.predict` over the scenes (one call per image, all its boxes in one batch)."""
    row = PipelineRow(variant, prep.name, prep.precision, persons, len(scenes))
    timed = _TimedEngine(prep.engine)
    try:
        predictor = PosePredictor(timed, batch_size=max(persons, 1))
        for image, boxes in scenes[: max(warmup, 0)]:
            predictor.predict(image, boxes)
        timed.seconds = 0.0
        t0 = time.perf_counter()
        for image, boxes in scenes:
            predictor.predict(image, boxes)
        total = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - report the failure as the row, keep the other engines
        row.status, row.reason = "failed", failure_reason(exc)
        return row
    n = len(scenes)
    row.total_ms_per_image = total / n * 1e3
    row.engine_ms_per_image = timed.seconds / n * 1e3
    row.outside_engine_share = max(0.0, 1.0 - timed.seconds / total)
    row.persons_per_s = persons * n / total
    row.images_per_s = n / total
    return row
