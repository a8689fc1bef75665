"""Skeleton overlays in the usual COCO colours (mmpose's scheme): face blue, left limbs green,
right limbs orange; MPII uses the same left/right colouring."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from tokenpose.keypoints import COCO_SKELETON, MPII_SKELETON

# BGR colours (OpenCV order).
FACE = (255, 153, 51)
LEFT = (0, 255, 0)
RIGHT = (0, 128, 255)
CENTRE = (255, 255, 255)

_COCO_LEFT = {1, 3, 5, 7, 9, 11, 13, 15}
_COCO_RIGHT = {2, 4, 6, 8, 10, 12, 14, 16}
_MPII_LEFT = {3, 4, 5, 13, 14, 15}
_MPII_RIGHT = {0, 1, 2, 10, 11, 12}


def _joint_colour(j: int, left: set[int], right: set[int], face: set[int]) -> tuple[int, int, int]:
    if j in face:
        return FACE
    return LEFT if j in left else RIGHT if j in right else CENTRE


def _link_colour(a: int, b: int, left: set[int], right: set[int], face: set[int]) -> tuple[int, int, int]:
    if a in face and b in face:
        return FACE
    if a in left and b in left:
        return LEFT
    if a in right and b in right:
        return RIGHT
    return CENTRE


def skeleton_for(num_joints: int) -> tuple[tuple[tuple[int, int], ...], set[int], set[int], set[int]]:
    """(links, left joints, right joints, face joints) for 17 (COCO) or 16 (MPII) joints."""
    if num_joints == 17:
        return COCO_SKELETON, _COCO_LEFT - {1, 3}, _COCO_RIGHT - {2, 4}, {0, 1, 2, 3, 4}
    if num_joints == 16:
        return MPII_SKELETON, _MPII_LEFT, _MPII_RIGHT, {8, 9}
    raise ValueError(f"no skeleton for {num_joints} joints (expected 17 for COCO or 16 for MPII)")


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A BGR colour of its own for each track id (hues a golden angle apart), grey for no track (< 0)."""
    if track_id < 0:
        return (200, 200, 200)
    hue = int((track_id * 0.618033988749895 % 1.0) * 180)
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw_poses(
    image_bgr: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray,
    *,
    boxes: np.ndarray | None = None,
    keypoint_threshold: float = 0.3,
    skeleton: Sequence[tuple[int, int]] | None = None,
    track_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """A copy of `image_bgr` (H, W, 3) uint8 with every pose drawn.

    keypoints: (N, J, 2) image pixels; scores: (N, J) joint confidences (joints and links below
    `keypoint_threshold` are not drawn); boxes: optional (N, 4) xywh drawn as thin rectangles.
    track_ids: optional (N,) ids: each person's box, links and "#id" label take its id's colour
    (`track_colour`); joints keep the left/right colours. Line width and dot size scale with the image size.
    """
    out = image_bgr.copy()
    # OpenCV takes int32 points; far-off points (a bad box) would overflow it. Clipped well
    # outside the image, they still draw the right part of a line that crosses it.
    limit = 8.0 * max(out.shape[:2])
    keypoints = np.clip(np.asarray(keypoints, dtype=np.float64), -limit, limit)
    if boxes is not None:
        boxes = np.clip(np.asarray(boxes, dtype=np.float64), -limit, 2 * limit)
    scores = np.asarray(scores, dtype=np.float64).reshape(keypoints.shape[:2])
    links, left, right, face = skeleton_for(keypoints.shape[1])
    links = skeleton if skeleton is not None else links
    thick = max(1, round(max(out.shape[:2]) / 400))
    radius = thick + 2
    for n in range(keypoints.shape[0]):
        colour = None if track_ids is None else track_colour(int(track_ids[n]))
        if boxes is not None:
            x, y, w, h = (int(round(v)) for v in boxes[n])
            cv2.rectangle(out, (x, y), (x + w, y + h), colour or (200, 200, 200), 1 if colour is None else thick,
                          cv2.LINE_AA)
            if colour is not None and track_ids[n] >= 0:
                cv2.putText(out, f"#{int(track_ids[n])}", (x + 2, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4 * (thick + 1), colour, thick, cv2.LINE_AA)
        pts = keypoints[n]
        ok = (scores[n] >= keypoint_threshold) & np.isfinite(pts).all(axis=1)
        for a, b in links:
            if ok[a] and ok[b]:
                pa, pb = tuple(int(round(v)) for v in pts[a]), tuple(int(round(v)) for v in pts[b])
                cv2.line(out, pa, pb, colour or _link_colour(a, b, left, right, face), thick + 1, cv2.LINE_AA)
        for j in np.flatnonzero(ok):
            centre = tuple(int(round(v)) for v in pts[j])
            cv2.circle(out, centre, radius, _joint_colour(int(j), left, right, face), -1, cv2.LINE_AA)
    return out


def draw_results(
    image_bgr: np.ndarray, results: Sequence[dict], *, keypoint_threshold: float = 0.3, person_threshold: float = 0.0
) -> np.ndarray:
    """A copy of `image_bgr` with the people of its COCO keypoint results drawn (see `draw_poses`).

    results: dicts with "keypoints" ([x, y, score] * J, pixels), "bbox" (x, y, w, h), "score"
    (the person score; people below `person_threshold` are not drawn) and, from a tracked run,
    "track_id" (each id in its own colour).
    """
    people = [r for r in results if r["score"] >= person_threshold]
    if not people:
        return image_bgr.copy()
    kpts = np.array([r["keypoints"] for r in people], dtype=np.float64).reshape(len(people), -1, 3)
    boxes = np.array([r["bbox"] for r in people], dtype=np.float64)
    ids = [r["track_id"] for r in people] if all("track_id" in r for r in people) else None
    return draw_poses(image_bgr, kpts[..., :2], kpts[..., 2], boxes=boxes, keypoint_threshold=keypoint_threshold,
                      track_ids=ids)
