"""A small Python client for `tokenpose serve`: the same `PosePrediction` objects as a local predictor.

Only the standard library's HTTP client, numpy and OpenCV: no Ray on the client side.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tokenpose.engines.predictor import PosePrediction
from tokenpose.errors import InputShapeError, TokenPoseError

__all__ = ["Client", "ServingError", "prediction_from_json"]


class ServingError(TokenPoseError):
    """The server refused or failed a request: `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _encode(image: np.ndarray | str | os.PathLike) -> bytes:
    """A path's bytes as they are, or a BGR uint8 array as a lossless PNG."""
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise InputShapeError("image must be a path or a BGR uint8 array (H, W) or (H, W, 3), as cv2.imread returns")
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise TokenPoseError(f"cannot encode an image of shape {image.shape} as PNG")
    return png.tobytes()


def _rows(boxes: Any) -> list[list[float]]:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return []
    if array.ndim != 2 or array.shape[1] not in (4, 5):
        raise InputShapeError(f"boxes must have shape (N, 4) x, y, w, h or (N, 5) with a score, got {array.shape}")
    return array.tolist()


def prediction_from_json(body: dict[str, Any]) -> PosePrediction:
    """A `POST /v1/pose` answer -> PosePrediction (keypoints, scores, boxes, crops as the server had them)."""
    people = body["people"]
    joints = np.array([p["keypoints"] for p in people], dtype=np.float64).reshape(len(people), -1, 3)
    return PosePrediction(
        keypoints=joints[..., :2], scores=joints[..., 2].astype(np.float32),
        boxes=np.array([p["box"] for p in people], dtype=np.float64).reshape(-1, 4),
        box_scores=np.array([p["box_score"] for p in people], dtype=np.float64),
        centers=np.array([p["center"] for p in people], dtype=np.float64).reshape(-1, 2),
        scales=np.array([p["scale"] for p in people], dtype=np.float64).reshape(-1, 2),
        image_hw=tuple(body["image_hw"]), skipped=list(body["skipped"]),
    )


class Client:
    """`Client("http://127.0.0.1:8000").predict(image, boxes)` -> PosePrediction.

    image: a path (sent as its bytes) or a BGR uint8 array (sent as PNG, lossless); boxes: (N, 4)
    x, y, w, h or (N, 5) with a score, in image pixels.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data,
                                         headers={"content-type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text.strip().splitlines()[0] if text.strip() else exc.reason
            raise ServingError(exc.code, f"{self.url}{path}: HTTP {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServingError(0, f"{self.url}{path}: no answer: {reason}") from None

    def predict(self, image: np.ndarray | str | os.PathLike, boxes: Any) -> PosePrediction:
        body = {"image": base64.b64encode(_encode(image)).decode("ascii"), "boxes": _rows(boxes)}
        return prediction_from_json(self._request("/v1/pose", body))

    def health(self) -> dict[str, Any]:
        return self._request("/v1/health")

    def model(self) -> dict[str, Any]:
        return self._request("/v1/model")
