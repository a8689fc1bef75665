"""A person detector that needs no download: OpenCV's built-in HOG + linear SVM people detector.

`cv2.HOGDescriptor_getDefaultPeopleDetector()` is the Dalal-Triggs pedestrian model that ships
inside OpenCV, so `tokenpose predict image.jpg` works offline on any picture. Its limits, plainly:

* it finds **upright, mostly unoccluded, standing or walking people** seen from the front, back
  or side; sitting, lying, bending, crowded, truncated or heavily occluded people are often missed;
* the detection window is 64x128 px, so people shorter than about 128 px are missed unless the
  image is upscaled (`upscale_small`); very large images are downscaled to `max_side` for speed;
* its scores are SVM margins, not calibrated probabilities (mapped here to (0, 1) by a logistic);
  boxes are loose (the window includes a margin around the person);
* it is far weaker than a modern CNN detector (the COCO figures in the docs use the HRNet person
  detections instead). Measured on coco_mini (158 non-crowd people with >= 5 labelled joints, a
  match at box IoU >= 0.4): it finds 19 of them, with 52 false boxes; without the replicated
  border it adds around the image it found 9, with 22 false boxes. Pass your own boxes
  (`--boxes det.json`) whenever you have them.

OpenCV 5 removed `HOGDescriptor` from the main package (it lives in opencv_contrib now). With
such an OpenCV, `hog_available()` is False and `detect_people` uses the whole-image fallback for
every image, with a warning: install `opencv-python-headless<5` to get the HOG detector back, or
pass boxes.

When nothing is found, `detect_people(..., whole_image_fallback=True)` returns one box covering
the whole image (score 0.01), which is right for a single-person photo or an already-cropped
person.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from tokenpose.errors import TokenPoseError

WHOLE_IMAGE_SCORE = 0.01
_warned: list[bool] = []  # warn once per process about a missing HOG detector


def hog_available() -> bool:
    """Whether this OpenCV ships the HOG people detector (OpenCV 4.x does, OpenCV 5 does not)."""
    return hasattr(cv2, "HOGDescriptor") and hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector")


HOG_MISSING = (
    f"OpenCV {cv2.__version__} has no HOG people detector (removed in OpenCV 5): using the whole image as "
    "one person box; pass --boxes for pictures with several people, or install 'opencv-python-headless<5'"
)


@dataclass(frozen=True)
class HogPersonDetector:
    """OpenCV HOG people detector.

    score_threshold: minimum logistic score (0..1) kept; nms_iou: IoU above which the weaker of two
    boxes is dropped; max_side: longer image side (px) the image is resized down to before
    detection; upscale_small: images whose longer side is below this are upscaled to it, so that
    people smaller than the 128 px window can be found; scale_step: pyramid step.
    """

    score_threshold: float = 0.3
    nms_iou: float = 0.45
    max_side: int = 960
    upscale_small: int = 640
    scale_step: float = 1.05

    def __call__(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BGR uint8 (H, W, 3) -> boxes (N, 4) float64 (x, y, w, h) in image pixels, scores (N,)."""
        if not hog_available():
            raise TokenPoseError(HOG_MISSING)
        h, w = image_bgr.shape[:2]
        longest = max(h, w)
        factor = 1.0
        if longest > self.max_side:
            factor = self.max_side / longest
        elif longest < self.upscale_small:
            factor = self.upscale_small / longest
        work = image_bgr if factor == 1.0 else cv2.resize(
            image_bgr, (max(1, round(w * factor)), max(1, round(h * factor))),
            interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR,
        )
        if min(work.shape[:2]) < 128:  # smaller than one detection window even after scaling
            return np.zeros((0, 4)), np.zeros(0)
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        # A person reaching the image border leaves no room for the detection window's margin;
        # a replicated border (1/8 of the longer side) lets the window slide past the edge.
        pad = max(work.shape[:2]) // 8
        work = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        rects, weights = hog.detectMultiScale(work, winStride=(8, 8), padding=(8, 8), scale=self.scale_step)
        if len(rects) == 0:
            return np.zeros((0, 4)), np.zeros(0)
        boxes = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        boxes[:, :2] -= pad
        boxes /= factor
        scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, dtype=np.float64).reshape(-1)))
        keep = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), self.score_threshold, self.nms_iou)
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        boxes, scores = boxes[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")
        return _clip(boxes[order], w, h), scores[order]


    def detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """BGR uint8 images -> per image (N, 5) x, y, w, h, score rows (`detect_people`, with its
        whole-image fallback), the interface of `tokenpose.predict.detectors.OnnxDetector`."""
        rows = []
        for image in images:
            boxes, scores = detect_people(image, self)
            rows.append(np.concatenate([boxes, scores[:, None]], axis=1))
        return rows


HOG_NOTICE = ("people were found by OpenCV's HOG detector, which is weak: on coco_mini it finds 19 of 158 "
              "people, with 52 false boxes; pass --detector model.onnx (YOLOv8/YOLO11, YOLOX, RTMDet) or --boxes")


def _clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    x1 = np.clip(boxes[:, 0], 0, width - 1)
    y1 = np.clip(boxes[:, 1], 0, height - 1)
    x2 = np.clip(boxes[:, 0] + boxes[:, 2], 1, width)
    y2 = np.clip(boxes[:, 1] + boxes[:, 3], 1, height)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)


def detect_people(
    image_bgr: np.ndarray,
    detector: HogPersonDetector | None = None,
    *,
    whole_image_fallback: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (N, 4) xywh pixels and scores (N,) of a BGR uint8 image.

    Uses the HOG detector (whole image with one warning when this OpenCV lacks it); when it finds
    nobody and `whole_image_fallback` is set, returns the whole image as one box with score 0.01
    (a low score marks it as a guess).
    """
    if not hog_available():
        if not whole_image_fallback:
            raise TokenPoseError(HOG_MISSING)
        if not _warned:
            warnings.warn(HOG_MISSING, stacklevel=2)
            _warned.append(True)
        boxes, scores = np.zeros((0, 4)), np.zeros(0)
    else:
        boxes, scores = (detector or HogPersonDetector())(image_bgr)
    if len(boxes) == 0 and whole_image_fallback:
        h, w = image_bgr.shape[:2]
        return np.array([[0.0, 0.0, float(w), float(h)]]), np.array([WHOLE_IMAGE_SCORE])
    return boxes, scores
