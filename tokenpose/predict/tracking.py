"""People over the frames of a video: track ids (ByteTrack), boxes from the last frame's keypoints
between detections (`--det-every`), and keypoint smoothing per track (`--smooth`).

    sequence = FrameSequence(TrackOptions(track=True, det_every=5, smooth=True, fps=25.0))
    boxes = sequence.carried_boxes()          # None: this frame needs the detector
    ids = sequence.assign_ids(boxes, scores)  # (N,) track ids, -1 for a box that starts no track
    keypoints = sequence.after_pose(index, ids, prediction)

Tracking is ByteTrack as the `supervision` package implements it (`pip install 'tokenpose[track]'`);
`supervision` is imported only when a tracker is made. A box that ByteTrack leaves without a track
(a low-score box that matches no track and is too weak to start one) keeps its pose, with track id -1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from tokenpose.engines.predictor import PosePrediction
from tokenpose.errors import TokenPoseError
from tokenpose.predict.smoothing import TrackSmoother

NO_TRACK = -1
KEYPOINT_BOX_PADDING = 1.25  # box around the confident joints, enlarged as mmpose/rtmlib do for the next frame


@dataclass(frozen=True)
class TrackOptions:
    """track: ByteTrack ids; smooth: One-Euro filter per track (implies track); det_every: run the
    detector on every N-th frame, boxes from the last frame's keypoints between; redetect_below:
    a person whose mean joint confidence falls below this makes the next frame a detection frame;
    fps: frames per second (time base of the tracker and the filter); min_cutoff / beta: the
    One-Euro filter's (see tokenpose.predict.smoothing)."""

    track: bool = False
    smooth: bool = False
    det_every: int = 1
    redetect_below: float = 0.3  # also: joints spanning under a quarter of their box's side re-detect
    fps: float = 30.0
    min_cutoff: float = 1.0
    beta: float = 0.01

    def __post_init__(self) -> None:
        if self.det_every < 1:
            raise TokenPoseError(f"--det-every must be >= 1, got {self.det_every}")
        if not self.fps > 0:
            raise TokenPoseError(f"frame rate must be > 0, got {self.fps}")
        if self.smooth and (self.min_cutoff <= 0 or self.beta < 0):
            raise TokenPoseError(f"--smooth needs min_cutoff > 0 and beta >= 0, got {self.min_cutoff}, {self.beta}")

    @property
    def active(self) -> bool:
        """Whether frames depend on each other at all."""
        return self.track or self.smooth or self.det_every > 1

    @property
    def tracking(self) -> bool:
        return self.track or self.smooth


class PersonTracker:
    """ByteTrack (supervision's) over person boxes. `update(boxes, scores)` -> (N,) int64 ids, ids
    from `first_id` up (a resumed run continues above the ids it recorded), NO_TRACK for none."""

    def __init__(self, fps: float = 30.0, first_id: int = 1) -> None:
        try:
            import supervision as sv
        except ImportError:
            raise TokenPoseError("--track needs the supervision package: pip install 'tokenpose[track]'") from None
        if not hasattr(sv, "ByteTrack"):
            raise TokenPoseError(f"supervision {sv.__version__} has no ByteTrack (removed in 0.31): "
                                 "pip install 'supervision>=0.30,<0.31'")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # its deprecation notice; the pin above keeps it
            self.tracker = sv.ByteTrack(frame_rate=fps)
        self.sv = sv
        self.offset = first_id - 1

    def update(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """boxes (N, 4) x, y, w, h pixels, scores (N,) of the next frame -> (N,) track ids."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids = np.full(len(boxes), NO_TRACK, dtype=np.int64)
        detections = self.sv.Detections(
            xyxy=np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1).astype(np.float32),
            confidence=np.asarray(scores, dtype=np.float32).reshape(-1), class_id=np.zeros(len(boxes), int),
            data={"index": np.arange(len(boxes))},
        )
        tracked = self.tracker.update_with_detections(detections)
        if len(tracked):
            ids[tracked.data["index"]] = tracked.tracker_id.astype(np.int64) + self.offset
        return ids


def boxes_from_keypoints(keypoints: np.ndarray, scores: np.ndarray, threshold: float,
                         image_hw: tuple[int, int]) -> np.ndarray:
    """(N, J, 2) keypoints and (N, J) scores -> (N, 4) x, y, w, h: the box around each person's joints
    scoring at least `threshold` (all joints when fewer than two do), enlarged KEYPOINT_BOX_PADDING
    times about its centre and clipped to the image (H, W)."""
    out = np.zeros((len(keypoints), 4))
    h, w = image_hw
    for n, (pts, s) in enumerate(zip(keypoints, scores)):
        ok = (s >= threshold) & np.isfinite(pts).all(axis=1)
        pts = pts[ok] if ok.sum() >= 2 else pts[np.isfinite(pts).all(axis=1)]
        if len(pts) == 0:
            continue
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        centre, size = (lo + hi) / 2, (hi - lo) * KEYPOINT_BOX_PADDING
        x1, y1 = np.clip(centre - size / 2, 0, [w, h])
        x2, y2 = np.clip(centre + size / 2, 0, [w, h])
        out[n] = [x1, y1, x2 - x1, y2 - y1]
    return out


class FrameSequence:
    """The state one video (or image sequence) carries from frame to frame; frames come in order.

    first_id: the lowest track id to give out (a resumed run starts above the ids it recorded).
    """

    def __init__(self, options: TrackOptions, first_id: int = 1) -> None:
        self.options = options
        self.tracker = PersonTracker(options.fps, first_id) if options.tracking else None
        self.smoother = (TrackSmoother(options.min_cutoff, options.beta, forget_after=1.0)
                         if options.smooth else None)
        self.carried: tuple[np.ndarray, np.ndarray] | None = None  # boxes, scores for the next frame
        self.since_detection = 0
        self.detections = 0

    def carried_boxes(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next frame's (boxes (N, 4), scores (N,)) from the last frame's keypoints, or None when
        the next frame must go to the detector (every det_every-th frame, or a person was lost)."""
        if self.carried is None or self.since_detection + 1 >= self.options.det_every:
            self.since_detection = 0
            self.detections += 1
            return None
        self.since_detection += 1
        return self.carried

    def assign_ids(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(N,) track ids of a frame's boxes, NO_TRACK everywhere without tracking."""
        if self.tracker is None:
            return np.full(len(boxes), NO_TRACK, dtype=np.int64)
        return self.tracker.update(boxes, scores)

    def after_pose(self, index: int, box_ids: np.ndarray, prediction: PosePrediction) -> tuple[np.ndarray, np.ndarray]:
        """A frame's (people's track ids (N,), keypoints (N, J, 2), smoothed with --smooth) from its
        box ids and prediction (its skipped boxes have no person); remembers what the next frame needs."""
        ids = np.delete(np.asarray(box_ids, dtype=np.int64), prediction.skipped)
        keypoints = prediction.keypoints
        if self.smoother is not None:
            keypoints = self.smoother(ids, keypoints, index / self.options.fps)
        if self.options.det_every > 1:
            confident = len(prediction) > 0 and bool(
                (prediction.scores.mean(axis=1) >= self.options.redetect_below).all())
            self.carried = None
            if confident:
                boxes = boxes_from_keypoints(keypoints, prediction.scores, self.options.redetect_below,
                                             prediction.image_hw)
                # joints collapsed into a box under a quarter of the person's box: a pose gone wrong
                if (boxes[:, 2:] >= prediction.boxes[:, 2:] / 4).all():
                    self.carried = (boxes, prediction.box_scores.copy())
        return ids, keypoints
