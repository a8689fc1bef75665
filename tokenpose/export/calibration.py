"""Real person crops for INT8 calibration and for FP16/INT8 accuracy checks.

Two sources, both put through the inference pre-processing (`preprocess_crops`: box -> center/scale
with the 1.25 padding, affine crop, ImageNet normalisation, RGB):

* a folder of images: each image is one person box covering the whole image (crops of people);
* a COCO keypoints json: every non-crowd person box of the annotations, images looked up beside
  the json (`../images`, `../<split>` for `person_keypoints_<split>.json`, or `images_dir`).

Samples are taken evenly spaced over the sorted list (deterministic, no RNG), up to `max_samples`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenpose.data.transforms import (
    box_to_center_scale,
    clip_box_to_image,
    preprocess_crops,
    read_image,
)
from tokenpose.errors import TokenPoseError
from tokenpose.models.config import ModelConfig, get_config

__all__ = ["IMAGE_SUFFIXES", "CalibrationError", "CalibrationSet", "load_calibration_set"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class CalibrationError(TokenPoseError):
    """The calibration data is missing, empty or unreadable."""


@dataclass
class CalibrationSet:
    """Normalised crops and where they came from.

    images: (N, 3, H, W) float32 model inputs; centers (N, 2) pixels; scales (N, 2) units of
    200 px; areas (N,) person areas in pixels^2 (the COCO `area`, or the box area for a folder);
    image_ids (N,) COCO image ids (-1 for a folder); files: (N,) image file names.
    """

    images: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    areas: np.ndarray
    image_ids: np.ndarray
    files: list[str]
    source: str
    kind: str  # "folder" or "coco"
    skipped: list[str] = field(default_factory=list)  # files that could not be read, with reasons

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int):
        """Yield (b, 3, H, W) float32 slices of `images`."""
        for i in range(0, len(self), batch_size):
            yield self.images[i:i + batch_size]

    def describe(self) -> dict:
        """JSON-friendly summary for the manifest."""
        return {
            "source": self.source,
            "kind": self.kind,
            "num_crops": len(self),
            "num_images": len(set(self.files)),
            "skipped_files": len(self.skipped),
            "preprocessing": "box -> center/scale (x1.25), affine crop, /255, ImageNet mean/std, RGB",
        }


def _evenly(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when k >= n)."""
    if k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _coco_images_dir(json_path: Path) -> Path | None:
    """The folder holding the images of a COCO json, by the usual layouts."""
    parent = json_path.parent
    candidates = [parent.parent / "images", parent / "images"]
    stem = json_path.stem
    if stem.startswith("person_keypoints_"):
        split = stem[len("person_keypoints_"):]
        candidates += [parent.parent / split, parent.parent / "images" / split]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _person_boxes_from_coco(path: Path, images_dir: Path | None) -> tuple[list[dict], Path]:
    """[(file, image_id, bbox xywh, area)] of every usable person box in a COCO json."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"cannot read COCO json {path}: {exc}") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise CalibrationError(f"{path} is not a COCO annotation json (needs 'images' and 'annotations')")
    images_dir = images_dir or _coco_images_dir(path)
    if images_dir is None:
        raise CalibrationError(f"cannot find the image folder of {path}; expected ../images beside it")
    images = {img["id"]: img for img in data["images"]}
    entries = []
    for ann in sorted(data["annotations"], key=lambda a: (a["image_id"], a.get("id", 0))):
        img = images.get(ann["image_id"])
        if img is None or ann.get("iscrowd", 0) or ann.get("category_id", 1) != 1:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        # Tiny boxes upsample a few pixels into a whole crop: they say little about activation ranges.
        if w < 16 or h < 16:
            continue
        entries.append({
            "file": str(images_dir / img["file_name"]), "image_id": int(img["id"]),
            "bbox": (x, y, w, h), "area": float(ann.get("area", w * h)),
        })
    return entries, images_dir


def _person_boxes_from_folder(folder: Path) -> list[dict]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [{"file": str(p), "image_id": -1, "bbox": None, "area": None} for p in files]


def _person_boxes(path: Path, images_dir: Path | None, exclude_image_ids: Sequence[int]) -> tuple[str, list[dict]]:
    """("folder" or "coco", its person boxes) for a calibration source; CalibrationError when none."""
    if not path.exists():
        raise CalibrationError(f"calibration data not found: {path}")
    if path.is_dir():
        entries = _person_boxes_from_folder(path)
        if not entries:
            raise CalibrationError(
                f"calibration folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        return "folder", entries
    if path.suffix.lower() != ".json":
        raise CalibrationError(f"calibration data must be a folder of images or a COCO .json, got {path}")
    entries, _ = _person_boxes_from_coco(path, images_dir)
    excluded = {int(i) for i in exclude_image_ids}
    entries = [e for e in entries if e["image_id"] not in excluded]
    if not entries:
        raise CalibrationError(f"COCO json {path} has no usable person boxes (non-crowd, >= 16 px)")
    return "coco", entries


def load_calibration_set(
    source: str | os.PathLike,
    config: ModelConfig | str,
    *,
    max_samples: int = 64,
    images_dir: str | os.PathLike | None = None,
    exclude_image_ids: Sequence[int] = (),
) -> CalibrationSet:
    """Read real person crops from a folder of images or a COCO keypoints json.

    source: a folder (every image is one whole-image person box) or a COCO json (its person
    boxes); config: the variant whose `input_hw` the crops take; max_samples: at most this many
    crops, evenly spaced over the sorted boxes; exclude_image_ids: COCO images to leave out (to
    keep calibration apart from evaluation). Raises CalibrationError when the source does not
    exist, holds no image, or none of its images can be read.
    """
    cfg = get_config(config)
    if max_samples < 1:
        raise CalibrationError(f"max_samples must be >= 1, got {max_samples}")
    path = Path(source)
    kind, entries = _person_boxes(path, Path(images_dir) if images_dir else None, exclude_image_ids)
    chosen = [entries[i] for i in _evenly(len(entries), max_samples)]
    crops, centers, scales, areas, ids, files, skipped = [], [], [], [], [], [], []
    cache: dict[str, np.ndarray | None] = {}
    for e in chosen:
        if e["file"] not in cache:
            try:
                cache[e["file"]] = read_image(e["file"])
            except OSError as exc:  # missing, empty or undecodable: skip it and say so
                cache[e["file"]] = None
                skipped.append(f"{e['file']}: {exc}")
        image = cache[e["file"]]
        if image is None:
            continue
        h, w = image.shape[:2]
        if e["bbox"] is None:
            box, valid = np.array([0.0, 0.0, w, h]), True
        else:
            box, valid = clip_box_to_image(e["bbox"], w, h)
        if not valid:
            continue
        center, scale = box_to_center_scale(box, cfg.aspect_ratio)
        crops.append(preprocess_crops(image, center[None], scale[None], cfg.input_hw)[0])
        centers.append(center)
        scales.append(scale)
        areas.append(e["area"] if e["area"] is not None else float(box[2] * box[3]))
        ids.append(e["image_id"])
        files.append(os.path.basename(e["file"]))
    if not crops:
        reason = f" ({skipped[0]})" if skipped else ""
        raise CalibrationError(f"no readable images in calibration data {path}{reason}")
    return CalibrationSet(
        images=np.stack(crops).astype(np.float32), centers=np.stack(centers), scales=np.stack(scales),
        areas=np.asarray(areas, dtype=np.float64), image_ids=np.asarray(ids, dtype=np.int64),
        files=files, source=str(path), kind=kind, skipped=skipped,
    )
