"""Person boxes for `tokenpose predict`: the `--boxes` json reader and the per-image box screen.

A boxes file is either COCO detection results (`[{"image_id": 785, "bbox": [x, y, w, h],
"score": 0.9, "category_id": 1, "file_name"?: ...}, ...]`) or `{file name: [[x, y, w, h, score?],
...]}`. The whole file is checked when it is opened: a wrong structure is one error naming the
entry; a box that cannot be used (non-finite values or score) is dropped with a note naming it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tokenpose.engines.predictor import MAX_BOX_FACTOR, usable_boxes
from tokenpose.errors import TokenPoseError

Row = tuple[list[float], float]  # ([x, y, w, h] pixels, score)


def _shown(box) -> str:
    """A box as a short readable list: `[0, 0, 1e+12, 1e+12]`."""
    return "[" + ", ".join(f"{float(v):.6g}" for v in box) + "]"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _box(value: object, what: str, allow_score: bool) -> tuple[list[float], float | None]:
    """[x, y, w, h] (or with a fifth score) -> (box, score or None); TokenPoseError naming `what`."""
    sizes = "[x, y, w, h] or [x, y, w, h, score]" if allow_score else "[x, y, w, h]"
    if not isinstance(value, list) or len(value) not in ((4, 5) if allow_score else (4,)):
        raise TokenPoseError(f"{what} must be {sizes}, got {json.dumps(value)[:60]}")
    for k, v in enumerate(value):
        if not _is_number(v):
            raise TokenPoseError(f"{what} must be {sizes} numbers, got {json.dumps(v)} at position {k}")
    score = float(value[4]) if len(value) == 5 else None
    return [float(v) for v in value[:4]], score


def _image_id(value: object, what: str) -> int:
    if _is_number(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise TokenPoseError(f"{what} has a non-integer image_id {json.dumps(value)}")


class BoxSource:
    """Person boxes per image from a json file: COCO detection results or a {file name: [[x, y, w,
    h, score?]]} dict.

    A detection with a `file_name` is matched by file name; one without is matched by its
    `image_id` against the number in the image's file name (`000000000785.jpg` is image 785, a
    video frame is its index). An image whose name carries no number cannot be matched to
    image_id-only detections: that is an error, not a guess (a folder index would attach the
    detections of another image).

    Boxes scoring below `score_threshold` are left out; boxes with a non-finite value or score
    are left out with a line in `notes` saying which and why.
    """

    def __init__(self, path: Path, score_threshold: float = 0.0) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"boxes file not found: {path}")
        try:
            with open(path) as f:
                data = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenPoseError(f"boxes file {path} is not valid JSON: {exc}") from None
        self.path = path
        self.threshold = score_threshold
        self.by_name: dict[str, list[Row]] = defaultdict(list)
        self.by_id: dict[int, list[Row]] = defaultdict(list)
        self.id_only = False  # some detections carry only an image_id
        self.notes: list[str] = []
        if isinstance(data, dict):
            self._read_mapping(data)
        elif isinstance(data, list):
            self._read_detections(data)
        else:
            raise TokenPoseError(f"{path}: expected a list of COCO detections or a {{file name: boxes}} object")

    def _keep(self, box: list[float], score: float, what: str) -> bool:
        """Whether a box is kept; a non-finite one is dropped with a note naming it."""
        if not math.isfinite(score):
            self.notes.append(f"{self.path}: dropped {what} {_shown(box)}: its score is {score}")
            return False
        if not all(math.isfinite(v) for v in box):
            self.notes.append(f"{self.path}: dropped {what} {_shown(box)}: non-finite coordinates")
            return False
        return score >= self.threshold

    def _read_mapping(self, data: dict) -> None:
        for name, rows in data.items():
            if not isinstance(rows, list):
                raise TokenPoseError(f"{self.path}: entry {name!r} must be a list of [x, y, w, h, score?] boxes, "
                                     f"got {json.dumps(rows)[:60]}")
            for k, row in enumerate(rows):
                what = f"box #{k} of {name!r}"
                box, score = _box(row, f"{self.path}: {what}", allow_score=True)
                score = 1.0 if score is None else score
                if self._keep(box, score, what):
                    self.by_name[Path(name).name].append((box, score))

    def _read_detections(self, data: list) -> None:
        for i, det in enumerate(data):
            what = f"{self.path}: detection #{i}"
            if not isinstance(det, dict):
                raise TokenPoseError(f"{what} must be an object with a 'bbox', got {json.dumps(det)[:60]}")
            if "bbox" not in det:
                raise TokenPoseError(f"{what} needs a 4-number 'bbox' (COCO detection results)")
            box, _ = _box(det["bbox"], f"{what} 'bbox'", allow_score=False)
            score = det.get("score", 1.0)
            if not _is_number(score):
                raise TokenPoseError(f"{what} 'score' must be a number, got {json.dumps(score)}")
            name = det.get("file_name")
            if name is not None and not isinstance(name, str):
                raise TokenPoseError(f"{what} 'file_name' must be a string, got {json.dumps(name)}")
            if name is None and "image_id" not in det:
                raise TokenPoseError(f"{what} has neither a 'file_name' nor an 'image_id'")
            image_id = _image_id(det["image_id"], what) if name is None else None
            self.id_only |= name is None
            if det.get("category_id", 1) != 1 or not self._keep(box, float(score), f"detection #{i}"):
                continue
            if name is not None:
                self.by_name[Path(name).name].append((box, float(score)))
            else:
                self.by_id[image_id].append((box, float(score)))

    def boxes(self, name: str, image_id: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) boxes and (N,) scores of image `name`. image_id: the image's COCO id when it has
        one (the number in its file name, a video frame's index), else None."""
        rows = list(self.by_name.get(Path(name).name, []))
        if self.id_only:
            if image_id is None:
                raise TokenPoseError(
                    f"{self.path}: its detections are matched by image_id, but {name!r} has no numeric file name "
                    "(like 000000000785.jpg) to take an image id from; add a 'file_name' to each detection, "
                    "or use a {file name: [[x, y, w, h, score]]} json"
                )
            rows += self.by_id.get(int(image_id), [])
        return (np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4),
                np.array([r[1] for r in rows], dtype=np.float64))


def screen_boxes(
    boxes: np.ndarray, scores: np.ndarray, image_hw: tuple[int, int], name: str,
    warn: Callable[[str], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Drop the boxes of image `name` that cannot give a pose, with one warning naming them.

    boxes: (N, 4) x, y, w, h pixels; scores (N,); image_hw: (H, W). Dropped: non-finite values,
    zero size, no overlap with the image (as `PosePredictor` would) and boxes over MAX_BOX_FACTOR
    times the image's width or height. Returns the kept boxes (M, 4) and scores (M,).
    """
    h, w = image_hw
    ok = usable_boxes(boxes, image_hw)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        shown = ", ".join(f"#{k} {_shown(boxes[k])}" for k in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        warn(f"{name} ({w}x{h}): dropped {len(bad)} box(es) with zero size, non-finite values, outside the image "
             f"or over {MAX_BOX_FACTOR:g}x its size: {shown}{more}")
    return boxes[ok], scores[ok]
