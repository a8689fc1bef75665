"""Tracking, --det-every and One-Euro smoothing over video (issue 15).

The filter's tests derive their bounds from its parameters (see tokenpose.predict.smoothing): an
exponential moving average's noise gain sqrt(alpha / (2 - alpha)) and steady lag v T (1 - alpha) / alpha.
The end-to-end test runs the real CLI on a video made from a coco_mini image, with a hand-built
ONNX detector that finds the person in it.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from cli_run import COCO_IMAGES, run_cli
from test_detectors import constant_graph
from test_engines import build_artifacts

from tokenpose.engines.predictor import PosePrediction
from tokenpose.errors import TokenPoseError
from tokenpose.predict.letterbox import letterbox
from tokenpose.predict.smoothing import OneEuroFilter, TrackSmoother, smoothing_factor
from tokenpose.predict.tracking import FrameSequence, PersonTracker, TrackOptions, boxes_from_keypoints

pytest.importorskip("supervision")

FPS = 30.0
IMAGE = COCO_IMAGES / "000000000785.jpg"  # 640x425, one person
PERSON = [277.0, 45.0, 225.0, 333.0]


def run_filter(flt: OneEuroFilter, signal: np.ndarray) -> np.ndarray:
    return np.array([flt(np.array([x]), k / FPS)[0] for k, x in enumerate(signal)])


def test_one_euro_reduces_still_jitter_as_its_cutoff_says():
    rng = np.random.default_rng(0)
    sigma, min_cutoff = 2.0, 1.0
    noisy = 100.0 + rng.normal(0, sigma, 6000)
    out = run_filter(OneEuroFilter(min_cutoff=min_cutoff, beta=0.0), noisy)
    alpha = smoothing_factor(1 / FPS, min_cutoff)
    expected = sigma * math.sqrt(alpha / (2 - alpha))  # alpha 0.17: ~0.62 px for 2 px of jitter
    measured = out[200:].std()
    assert expected < 0.35 * sigma
    assert measured == pytest.approx(expected, rel=0.1)


def test_one_euro_lag_on_constant_motion_is_bounded_by_min_cutoff():
    speed = 120.0  # px/s
    ramp = speed * np.arange(300) / FPS
    alpha = smoothing_factor(1 / FPS, 1.0)
    bound = speed / FPS * (1 - alpha) / alpha  # the steady lag at min_cutoff: ~19 px
    still = run_filter(OneEuroFilter(min_cutoff=1.0, beta=0.0), ramp)
    assert ramp[-1] - still[-1] == pytest.approx(bound, rel=1e-3)
    fast = run_filter(OneEuroFilter(min_cutoff=1.0, beta=0.05), ramp)
    # beta raises the cutoff to 1 + beta * speed estimate; the estimate, (x - x_hat_prev) / T as in the
    # paper, settles at v + lag / T, so the steady lag solves lag = v T (1 - a) / a with a of that cutoff.
    lag = 0.0
    for _ in range(100):
        a = smoothing_factor(1 / FPS, 1.0 + 0.05 * (speed + lag * FPS))
        lag = speed / FPS * (1 - a) / a
    assert ramp[-1] - fast[-1] == pytest.approx(lag, rel=1e-3)
    assert ramp[-1] - fast[-1] < bound / 4


def test_one_euro_on_jittered_motion_cuts_jitter_and_keeps_lag_bounded():
    """A sine of 80 px at 0.2 Hz (peak speed v = 100 px/s) with 2 px of jitter. An EMA of step alpha
    passes frame-to-frame jitter times alpha / sqrt(2 - alpha); beta = 0.01 raises the cutoff above
    1 Hz, to 4 Hz at most for speed estimates up to 3 v. The error is at most the 1 Hz lag at v plus
    3 sigma of jitter."""
    rng = np.random.default_rng(1)
    sigma, beta, t = 2.0, 0.01, np.arange(900) / FPS
    truth = 200 + 80 * np.sin(2 * np.pi * 0.2 * t)
    peak_speed = 2 * np.pi * 0.2 * 80
    out = run_filter(OneEuroFilter(min_cutoff=1.0, beta=beta), truth + rng.normal(0, sigma, len(t)))[60:]
    noisy_jitter = math.sqrt(2) * sigma  # std of the frame-to-frame change of white jitter
    alpha_hi = smoothing_factor(1 / FPS, 1.0 + beta * 3 * peak_speed)
    assert np.diff(out - truth[60:]).std() < noisy_jitter * alpha_hi / math.sqrt(2 - alpha_hi)  # ~0.37x
    alpha = smoothing_factor(1 / FPS, 1.0)
    assert np.abs(out - truth[60:]).max() < peak_speed / FPS * (1 - alpha) / alpha + 3 * sigma  # 16 + 6 px


def test_track_smoother_keeps_tracks_apart_and_forgets_lost_ones():
    smoother = TrackSmoother(min_cutoff=1.0, beta=0.0, forget_after=0.5)
    a, b = np.zeros((1, 17, 2)), np.full((1, 17, 2), 100.0)
    smoother(np.array([1, 2]), np.concatenate([a, b]), 0.0)
    out = smoother(np.array([1, 2, -1]), np.concatenate([a + 10, b, b + 7]), 1 / FPS)
    alpha = smoothing_factor(1 / FPS, 1.0)
    np.testing.assert_allclose(out[0], 10 * alpha)
    np.testing.assert_allclose(out[1], 100.0)
    np.testing.assert_allclose(out[2], 107.0)  # untracked: as is
    np.testing.assert_allclose(smoother(np.array([1]), a + 50, 2.0)[0], 50.0)  # lost for 2 s: starts afresh


def test_bytetrack_gives_stable_ids_to_moving_people():
    tracker = PersonTracker(fps=FPS, first_id=5)
    seen = []
    for k in range(20):
        boxes = np.array([[10 + 3 * k, 50, 40, 100], [300 - 3 * k, 60, 40, 100]], np.float64)
        order = [1, 0] if k % 2 else [0, 1]  # the detector's order changes; the ids must not
        ids = tracker.update(boxes[order], np.array([0.9, 0.8])[order])
        seen.append(dict(zip(order, ids.tolist())))
    assert all(s == {0: 5, 1: 6} for s in seen), seen


def test_boxes_from_keypoints_pad_the_confident_joints():
    kpts = np.array([[[100, 100], [200, 300], [900, 900]]], np.float64)
    scores = np.array([[0.9, 0.8, 0.1]])
    np.testing.assert_allclose(boxes_from_keypoints(kpts, scores, 0.3, (480, 640)),
                               [[87.5, 75.0, 125.0, 250.0]])


def prediction(confidence: float) -> PosePrediction:
    kpts = np.array([[[100, 100], [140, 200]]], np.float64)
    return PosePrediction(kpts, np.full((1, 2), confidence, np.float32), np.array([[90.0, 90, 60, 120]]),
                          np.array([0.9]), np.zeros((1, 2)), np.ones((1, 2)), (480, 640))


def test_det_every_detects_every_nth_frame_and_when_confidence_drops():
    seq = FrameSequence(TrackOptions(det_every=3, redetect_below=0.3))
    detected = []
    for k in range(8):
        detected.append(seq.carried_boxes() is None)
        seq.after_pose(k, np.array([-1]), prediction(0.1 if k == 5 else 0.9))
    assert detected == [True, False, False, True, False, False, True, False]
    assert seq.detections == 3
    seq.after_pose(8, np.array([-1]), prediction(0.9))
    boxes, scores = seq.carried_boxes()
    np.testing.assert_allclose(boxes, [[95.0, 87.5, 50.0, 125.0]])
    np.testing.assert_allclose(scores, [0.9])
    collapsed = prediction(0.9)
    collapsed.keypoints[:] = 100.0  # every joint on one point: the next frame is detected
    seq.after_pose(9, np.array([-1]), collapsed)
    assert seq.carried_boxes() is None


def test_bad_det_every_is_refused():
    with pytest.raises(TokenPoseError, match="--det-every must be >= 1, got 0"):
        TrackOptions(det_every=0)


@pytest.fixture(scope="module")
def video_and_detector(tmp_path_factory):
    """A 12-frame video of the 785 image sliding right by 4 px a frame, and a YOLOv8-format
    detector that always finds the person where the first frame has them."""
    folder = tmp_path_factory.mktemp("video")
    image = cv2.imread(str(IMAGE))
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (640, 425))
    for k in range(12):
        writer.write(np.roll(image, 4 * k, axis=1))
    writer.release()
    _, box = letterbox(image, (320, 320))
    x1, y1, x2, y2 = box.to_input(np.array([[PERSON[0], PERSON[1], PERSON[0] + PERSON[2], PERSON[1] + PERSON[3]]]))[0]
    anchors = np.zeros((1, 5, 20), np.float32)
    anchors[0, :, 0] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.9]
    detector = constant_graph(folder / "det.onnx", {"output0": anchors})
    return folder / "clip.mp4", detector, build_artifacts(folder)["onnx"]


def test_predict_video_with_detector_track_smooth_and_det_every(video_and_detector, tmp_path):
    video, detector, engine = video_and_detector
    out = tmp_path / "out"
    result = run_cli("predict", video, "-e", engine, "--detector", detector, "--track", "--smooth",
                     "--det-every", "4", "-o", out)
    assert result.rc == 0, result.stderr
    # the tiny model's joints collapse on one point, so every frame is re-detected (see the unit test above)
    assert "(1 tracks) (detector on 12 frames)" in result.stdout, result.stdout
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 12 and {r["track_id"] for r in rows} == {1}
    assert (out / "clip.mp4").stat().st_size > 0
    first = np.array(rows[0]["bbox"])
    np.testing.assert_allclose(first, PERSON, atol=1.0)  # the detector's box, mapped back through the letterbox
    plain = run_cli("predict", video, "-e", engine, "--detector", detector, "-o", tmp_path / "plain", "--no-draw")
    assert plain.rc == 0, plain.stderr
    rows_plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert all("track_id" not in r for r in rows_plain) and len(rows_plain) == 12
    assert "HOG" not in plain.stderr
