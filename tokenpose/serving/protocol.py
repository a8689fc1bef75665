"""The HTTP protocol of `tokenpose serve`, as pure functions: request bodies in, responses out.

`POST /v1/pose` takes either JSON `{"image": "<base64 JPEG/PNG>", "boxes": [[x, y, w, h(, score)], ...]}`
or `multipart/form-data` with an `image` file part and a `boxes` JSON part, and answers
`{"people": [...], "skipped": [...], "model": {...}, "batch": {...}}`. Every problem with a request is
a `RequestError` carrying the HTTP status and one line for `{"error": ...}`; nothing here needs Ray,
so the parsing is tested without a server and shared with the Python client.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from tokenpose.engines.predictor import PosePrediction

__all__ = [
    "Limits",
    "PoseRequest",
    "RequestError",
    "decode_image",
    "parse_boxes",
    "parse_json_request",
    "prediction_to_json",
]


class RequestError(Exception):
    """A request the server refuses: `status` (400, 413, ...) and a one-line `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may carry: body bytes, boxes, and image side in pixels."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_boxes: int = 256
    max_image_side: int = 8192


@dataclass
class PoseRequest:
    """A parsed request: image (H, W, 3) BGR uint8 and boxes (N, 5) x, y, w, h, score (None: the
    request has none, for the server's detector to find)."""

    image: np.ndarray
    boxes: np.ndarray | None


def decode_image(data: bytes, limits: Limits) -> np.ndarray:
    """Encoded JPEG/PNG/... bytes -> (H, W, 3) BGR uint8; RequestError 400 when it is no image."""
    if not data:
        raise RequestError(400, "image is empty")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise RequestError(400, f"image ({len(data)} bytes) is not a JPEG, PNG or other image OpenCV can decode")
    if max(image.shape[:2]) > limits.max_image_side:
        raise RequestError(413, f"image is {image.shape[1]}x{image.shape[0]} px; the limit is "
                                f"{limits.max_image_side} px a side")
    return image


def parse_boxes(value: Any, limits: Limits) -> np.ndarray:
    """A JSON list of [x, y, w, h] or [x, y, w, h, score] rows -> (N, 5) float64 (score 1 when absent)."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RequestError(400, f"boxes is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(value, list):
        raise RequestError(400, f"boxes must be a list of [x, y, w, h] or [x, y, w, h, score] rows, "
                                f"got {type(value).__name__}")
    if len(value) > limits.max_boxes:
        raise RequestError(413, f"{len(value)} boxes in one request; the limit is {limits.max_boxes}")
    rows = np.empty((len(value), 5), dtype=np.float64)
    for i, row in enumerate(value):
        ok = isinstance(row, list) and len(row) in (4, 5) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in row)
        if not ok:
            raise RequestError(400, f"boxes[{i}] = {json.dumps(row)[:80]} is not [x, y, w, h] or "
                                    "[x, y, w, h, score] with finite numbers")
        rows[i] = [*row, 1.0] if len(row) == 4 else row
    return rows


def _field(body: dict, name: str) -> Any:
    if name not in body:
        raise RequestError(400, f"request has no {name!r} field (expected {{\"image\": base64, \"boxes\": [...]}})")
    return body[name]


def parse_json_request(raw: bytes, limits: Limits, boxes_optional: bool = False) -> PoseRequest:
    """A JSON body `{"image": base64, "boxes": [...]}` -> PoseRequest; with `boxes_optional` (a server
    with a detector) a body without "boxes" gives boxes None."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"body is not valid JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"body must be a JSON object, got {type(body).__name__}")
    encoded = _field(body, "image")
    if not isinstance(encoded, str):
        raise RequestError(400, f"image must be a base64 string, got {type(encoded).__name__}")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"image is not valid base64: {exc}") from None
    if boxes_optional and body.get("boxes") is None:
        return PoseRequest(decode_image(data, limits), None)
    return PoseRequest(decode_image(data, limits), parse_boxes(_field(body, "boxes"), limits))


def prediction_to_json(prediction: PosePrediction) -> dict[str, Any]:
    """The `people` and `skipped` of a response. Floats are written exactly (JSON keeps float64)."""
    people = []
    for k, s, b, bs, c, sc, p in zip(prediction.keypoints, prediction.scores, prediction.boxes,
                                    prediction.box_scores, prediction.centers, prediction.scales,
                                    prediction.scores_person):
        people.append({
            "keypoints": [[float(x), float(y), float(v)] for (x, y), v in zip(k, s)],
            "box": [float(v) for v in b], "box_score": float(bs), "score": float(p),
            "center": [float(v) for v in c], "scale": [float(v) for v in sc],
        })
    return {"people": people, "skipped": [int(i) for i in prediction.skipped]}
