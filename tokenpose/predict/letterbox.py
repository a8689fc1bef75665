"""Letterboxing: an image resized, keeping its aspect ratio, into a detector's fixed input, and back.

Coordinates are pixel edges (a box x, y, w, h covers [x, x + w)), in which a resize is an exact
scaling: a point u of the image lands on u * scale + pad in the input, per axis. The scale per
axis is the one the resize really applied (rounded size / size), so the inverse is exact to
float precision, not only to the rounding of the size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits in the input: input = image * scale + pad; scale (sx, sy), pad (left, top) px."""

    scale: tuple[float, float]
    pad: tuple[float, float]

    def to_input(self, xyxy: np.ndarray) -> np.ndarray:
        """(N, 4) x1, y1, x2, y2 image pixels -> input pixels."""
        s = np.array([*self.scale, *self.scale])
        return np.asarray(xyxy, dtype=np.float64) * s + np.array([*self.pad, *self.pad])

    def to_image(self, xyxy: np.ndarray) -> np.ndarray:
        """(N, 4) x1, y1, x2, y2 input pixels -> image pixels (the exact inverse of `to_input`)."""
        s = np.array([*self.scale, *self.scale])
        return (np.asarray(xyxy, dtype=np.float64) - np.array([*self.pad, *self.pad])) / s


def letterbox(image: np.ndarray, size_hw: tuple[int, int], *, centred: bool = True,
              pad_value: int = 114) -> tuple[np.ndarray, Letterbox]:
    """(H, W, 3) uint8 -> (size_h, size_w, 3) uint8 canvas filled with `pad_value`, holding the image
    resized by one factor (the largest that fits); centred (padding on both sides, as ultralytics)
    or in the top-left corner (as YOLOX and mmdet). Returns the canvas and its `Letterbox`."""
    h, w = image.shape[:2]
    out_h, out_w = size_hw
    ratio = min(out_h / h, out_w / w)
    new_w, new_h = max(1, min(out_w, round(w * ratio))), max(1, min(out_h, round(h * ratio)))
    resized = image if (new_w, new_h) == (w, h) else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    left, top = ((out_w - new_w) // 2, (out_h - new_h) // 2) if centred else (0, 0)
    canvas = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas, Letterbox((new_w / w, new_h / h), (float(left), float(top)))
