"""Tests of tokenpose.evaluation: OKS, OKS NMS, rescoring, COCO AP via pycocotools, MPII PCKh."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tokenpose.keypoints import COCO_SIGMAS
from tokenpose.evaluation import (
    COCO_STAT_NAMES,
    MEAN_AT_0_1_THRESHOLD,
    CocoEvaluator,
    head_sizes_from_head_segment,
    oks,
    oks_matrix,
    oks_nms,
    pckh,
    rescore,
)

FIXTURES = Path(__file__).parent / "fixtures"
COCO_ANN = FIXTURES / "coco_mini" / "annotations" / "person_keypoints_mini.json"
MPII_ANN = FIXTURES / "mpii_mini" / "annotations" / "mpii_mini.json"
SIGMAS = np.asarray(COCO_SIGMAS)


@pytest.fixture(scope="module")
def coco_gt() -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(COCO_ANN))


def gt_persons(coco: COCO):
    """GT persons pycocotools scores (non-crowd, >= 1 labelled keypoint) as add() arguments.

    Unlabelled joints are put at the box center, as a model would predict them somewhere on the
    person (COCO stores them at (0, 0), which would make distinct people look alike to OKS NMS).
    """
    anns = [a for a in coco.loadAnns(coco.getAnnIds(iscrowd=False)) if a["num_keypoints"] > 0]
    ids, kpts, vis, centers, scales = [], [], [], [], []
    for a in anns:
        k = np.asarray(a["keypoints"], dtype=np.float64).reshape(17, 3)
        x, y, w, h = a["bbox"]
        c = np.array([x + w / 2, y + h / 2])
        xy = np.where(k[:, 2:3] > 0, k[:, :2], c)
        ids.append(a["image_id"])
        kpts.append(xy)
        vis.append(k[:, 2] > 0)
        centers.append(c)
        scales.append(np.array([max(w, 1.0), max(h, 1.0)]) * 1.25 / 200.0)
    return (np.asarray(ids), np.asarray(kpts), np.asarray(vis), np.asarray(centers), np.asarray(scales))


def direct_cocoeval(coco: COCO, results, img_ids) -> np.ndarray:
    """pycocotools used directly, as the official _do_python_keypoint_eval does."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(results)
        ev = COCOeval(coco, dt, "keypoints")
        ev.params.imgIds = sorted(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def random_pose(rng, j=17, scale=100.0):
    return rng.uniform(0, scale, size=(j, 2))


def test_oks_identical_is_one_and_decreases_with_distance():
    rng = np.random.default_rng(0)
    pose = random_pose(rng)
    area = 80.0 * 120.0
    shifts = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    others = pose[None] + shifts[:, None, None] * np.array([1.0, 0.0])
    values = oks(pose, others, area)
    assert values.shape == (len(shifts),)
    assert values[0] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(values) < 0)
    assert np.all(values > 0)


def test_oks_single_joint_shift_matches_formula():
    pose = np.zeros((17, 3))
    moved = pose.copy()
    moved[5, 0] = 3.0  # left shoulder moved 3 px
    area_a, area_b = 5000.0, 3000.0
    e = 9.0 / (2 * SIGMAS[5]) ** 2 / ((area_a + area_b) / 2 + np.spacing(1)) / 2
    expected = (16.0 + np.exp(-e)) / 17.0
    assert oks(pose, moved[None], area_a, np.array([area_b]))[0] == pytest.approx(expected, rel=1e-12)
    # a (J, 3) third column (score / visibility) does not enter the OKS
    moved[:, 2] = 0.123
    assert oks(pose, moved, area_a, area_b)[0] == pytest.approx(expected, rel=1e-12)


def test_oks_matrix_symmetric_and_matches_rows():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 50, size=(4, 17, 2))
    b = rng.uniform(0, 50, size=(3, 17, 2))
    area_a = rng.uniform(500, 3000, size=4)
    area_b = rng.uniform(500, 3000, size=3)
    m = oks_matrix(a, b, area_a, area_b)
    assert m.shape == (4, 3)
    for i in range(4):
        np.testing.assert_allclose(m[i], oks(a[i], b, area_a[i], area_b), rtol=1e-12)
    np.testing.assert_allclose(oks_matrix(b, a, area_b, area_a), m.T, rtol=1e-12)
    assert np.all((m > 0) & (m <= 1))


def test_oks_bad_input():
    pose = np.zeros((17, 2))
    with pytest.raises(ValueError, match="joints"):
        oks(pose, np.zeros((2, 16, 2)), 100.0)
    with pytest.raises(ValueError, match="sigmas"):
        oks(pose, np.zeros((2, 17, 2)), 100.0, sigmas=[0.1] * 16)
    with pytest.raises(ValueError, match="areas_b"):
        oks(pose, np.zeros((2, 17, 2)), 100.0, np.ones(3))
    with pytest.raises(ValueError, match=r"\(N, J, 2\)"):
        oks_matrix(np.zeros((2, 17, 4)), np.zeros((2, 17, 2)), 1.0, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        oks(pose, np.full((1, 17, 2), np.nan), 100.0)


def test_oks_nms_hand_made():
    rng = np.random.default_rng(2)
    base = random_pose(rng, scale=60.0) + 100.0
    area = 60.0 * 60.0
    near = base + np.array([1.0, 0.0])  # 1 px away: OKS well above 0.9
    mid = base + np.array([6.0, 0.0])  # 6 px away: OKS below 0.9
    far = base + 400.0
    poses = np.stack([near, base, base.copy(), mid, far])  # base.copy(): an exact duplicate
    scores = np.array([0.7, 0.9, 0.8, 0.6, 0.5])
    areas = np.full(5, area)
    o = oks(base, poses, area)
    assert o[0] > 0.9 and o[2] == pytest.approx(1.0) and o[3] < 0.9 and o[4] < 1e-6

    keep = oks_nms(poses, scores, areas, threshold=0.9)
    assert keep.dtype == np.int64
    assert keep.tolist() == [1, 3, 4]  # best first; duplicate and 1-px neighbour dropped

    # only OKS strictly above the threshold suppresses
    keep_at = oks_nms(poses[[1, 3]], scores[[1, 3]], areas[[1, 3]], threshold=float(o[3]))
    assert keep_at.tolist() == [0, 1]
    keep_below = oks_nms(poses[[1, 3]], scores[[1, 3]], areas[[1, 3]], threshold=float(o[3]) - 1e-9)
    assert keep_below.tolist() == [0]

    # a larger area makes the same pixel distance more similar: mid is then suppressed
    assert oks_nms(poses, scores, areas * 100.0).tolist() == [1, 4]
    assert oks_nms(np.zeros((0, 17, 2)), np.zeros(0), np.zeros(0)).tolist() == []


def test_oks_nms_matches_greedy_loop_on_crowded_poses():
    """Against a plain loop over the spec: pick the best remaining, drop those with OKS > thr."""
    rng = np.random.default_rng(5)
    centers = rng.uniform(0, 200, size=(4, 1, 2))
    poses = (centers + rng.normal(0, 15, size=(4, 17, 2)))[rng.integers(0, 4, 40)]
    poses = poses + rng.normal(0, 2.5, size=poses.shape)  # 40 noisy copies of 4 people
    scores = rng.uniform(size=40)
    areas = rng.uniform(5000, 20000, size=40)

    remaining = list(np.argsort(-scores))
    expected = []
    while remaining:
        i = remaining.pop(0)
        expected.append(i)
        remaining = [r for r in remaining if oks(poses[i], poses[r], areas[i], areas[r])[0] <= 0.9]
    keep = oks_nms(poses, scores, areas, 0.9)
    assert keep.tolist() == expected
    assert 8 <= len(keep) <= 20  # some copies merged, some kept


def test_oks_nms_bad_input():
    poses = np.zeros((3, 17, 2))
    with pytest.raises(ValueError, match="scores"):
        oks_nms(poses, np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="areas"):
        oks_nms(poses, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="areas"):
        oks_nms(poses, np.ones(3), -np.ones(3))


def test_rescore_hand_made():
    maxvals = np.zeros((3, 17))
    maxvals[0, :4] = [0.9, 0.5, 0.2, 0.1]  # 0.2 is not > 0.2: mean of 0.9 and 0.5
    maxvals[1, :] = 0.15  # nothing above the threshold -> 0
    maxvals[2, :] = 0.8
    box = np.array([0.5, 1.0, 0.25])
    scores = rescore(maxvals[..., None], box)
    np.testing.assert_allclose(scores, [0.7 * 0.5, 0.0, 0.8 * 0.25], rtol=1e-12)
    np.testing.assert_allclose(rescore(maxvals, box, in_vis_thre=0.1), [(0.9 + 0.5 + 0.2) / 3 * 0.5, 0.15, 0.2])
    with pytest.raises(ValueError, match="box_scores"):
        rescore(maxvals, np.ones(2))


def test_results_rescore_and_nms(coco_gt):
    img = coco_gt.getImgIds()[0]
    rng = np.random.default_rng(3)
    a = random_pose(rng, scale=80.0) + 50.0
    b = a + 300.0
    kpts = np.stack([a, a + 0.5, b])  # the second is a near-duplicate of the first
    maxvals = np.full((3, 17, 1), 0.1)
    maxvals[0, :, 0] = 0.6
    maxvals[1, :, 0] = 0.9  # higher kpt score, but a lower box score
    maxvals[2, :10, 0] = 0.4
    box_scores = np.array([1.0, 0.5, 0.8])
    centers = np.array([[90.0, 90.0], [90.0, 90.0], [390.0, 390.0]])
    scales = np.full((3, 2), 0.5)  # 100 x 100 px -> area 1e4

    ev = CocoEvaluator(COCO_ANN)
    ev.add([img] * 3, kpts, maxvals, centers, scales, box_scores)
    assert len(ev) == 3
    res = ev.results()
    # scores: 0.6, 0.45, 0.4 * 0.8 = 0.32; the near-duplicate (0.45) is suppressed
    assert [r["score"] for r in res] == pytest.approx([0.6, 0.32])
    assert res[0]["image_id"] == img and res[0]["category_id"] == 1
    np.testing.assert_allclose(np.reshape(res[0]["keypoints"], (17, 3)), np.concatenate([a, maxvals[0]], 1))
    assert res[1]["center"] == [390.0, 390.0] and res[1]["scale"] == [0.5, 0.5]

    no_nms = CocoEvaluator(COCO_ANN, oks_thre=None)
    no_nms.add([img] * 3, kpts, maxvals[..., 0], centers, scales, box_scores)
    assert [r["score"] for r in no_nms.results()] == pytest.approx([0.6, 0.45, 0.32])


def test_gt_keypoints_give_ap_one(coco_gt):
    ids, kpts, vis, centers, scales = gt_persons(coco_gt)
    ev = CocoEvaluator(coco_gt)
    ev.add(ids, kpts, vis[..., None].astype(float), centers, scales, np.ones(len(ids)))
    assert len(ev.results()) == len(ids)  # OKS NMS keeps every distinct person
    stats = ev.evaluate()
    assert list(stats) == list(COCO_STAT_NAMES)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AR"] == pytest.approx(1.0)
    assert "Average Precision" in ev.last_summary


def test_jittered_ap_equals_direct_pycocotools(coco_gt, tmp_path, capsys):
    ids, kpts, vis, centers, scales = gt_persons(coco_gt)
    rng = np.random.default_rng(4)
    noisy = kpts + rng.normal(0.0, 4.0, size=kpts.shape)
    box_scores = rng.uniform(0.3, 1.0, size=len(ids))  # distinct scores: no order-dependent ties
    maxvals = np.ones((len(ids), 17, 1))  # kpt_score 1 -> score == box score

    ev = CocoEvaluator(COCO_ANN)
    half = len(ids) // 2  # two add() calls, as batches would come
    ev.add(ids[:half], noisy[:half], maxvals[:half], centers[:half], scales[:half], box_scores[:half])
    ev.add(ids[half:], noisy[half:], maxvals[half:], centers[half:], scales[half:], box_scores[half:])
    stats = ev.evaluate()
    assert capsys.readouterr().out == ""  # silent by default
    assert 0.0 < stats["AP"] < 1.0
    assert len(ev.results()) == len(ids)

    # 1) pycocotools on the json the evaluator wrote
    path = ev.write_results(tmp_path / "sub" / "results.json")
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    direct = direct_cocoeval(coco_gt, str(path), set(ids.tolist()))
    np.testing.assert_array_equal(np.asarray(list(stats.values())), direct)

    # 2) pycocotools on results built here, without the evaluator
    raw = [
        {
            "image_id": int(i),
            "category_id": 1,
            "keypoints": np.concatenate([k, np.ones((17, 1))], 1).reshape(-1).tolist(),
            "score": float(s),
        }
        for i, k, s in zip(ids, noisy, box_scores)
    ]
    direct_raw = direct_cocoeval(coco_gt, raw, set(ids.tolist()))
    np.testing.assert_array_equal(np.asarray(list(stats.values())), direct_raw)

    # the verbose switch prints pycocotools' summary
    ev.evaluate(verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_evaluate_restricted_to_predicted_images(coco_gt):
    ids, kpts, vis, centers, scales = gt_persons(coco_gt)
    first = ids == ids[0]
    ev = CocoEvaluator(coco_gt)
    ev.add(ids[first], kpts[first], np.ones((first.sum(), 17)), centers[first], scales[first], np.ones(first.sum()))
    assert ev.evaluate()["AP"] == pytest.approx(1.0)
    # over every image, the persons of the other images are misses
    all_stats = ev.evaluate(image_ids=coco_gt.getImgIds())
    assert all_stats["AR"] < 0.5


def test_coco_evaluator_bad_input(coco_gt, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        CocoEvaluator(tmp_path / "missing.json")
    ev = CocoEvaluator(coco_gt)
    img = coco_gt.getImgIds()[0]
    good = dict(
        image_ids=[img], keypoints=np.zeros((1, 17, 2)), maxvals=np.ones((1, 17, 1)),
        centers=np.zeros((1, 2)), scales=np.ones((1, 2)), box_scores=[1.0],
    )
    with pytest.raises(ValueError, match="no predictions"):
        ev.evaluate()
    assert ev.results() == []
    for key, bad, msg in [
        ("keypoints", np.zeros((1, 16, 2)), "keypoints must have shape"),
        ("keypoints", np.zeros((2, 17, 2)), "keypoints must have shape"),
        ("maxvals", np.ones((1, 17, 2)), "maxvals must have shape"),
        ("centers", np.zeros((1, 3)), "centers must have shape"),
        ("scales", np.zeros((1, 2)), "scales must be > 0"),
        ("box_scores", [1.0, 1.0], "box_scores must have shape"),
        ("keypoints", np.full((1, 17, 2), np.nan), "keypoints contains non-finite"),
        ("image_ids", [123456789], "not in the annotation file: 123456789"),
        ("image_ids", [[img]], "image_ids must have shape"),
        ("image_ids", [1.5], "must be integers"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ev.add(**{**good, key: bad})
    assert len(ev) == 0  # nothing half-added
    ev.add(**good)
    with pytest.raises(ValueError, match="not in the annotation file"):
        ev.evaluate(image_ids=[123456789])
    ev.reset()
    assert len(ev) == 0


@pytest.fixture(scope="module")
def mpii():
    entries = json.loads(MPII_ANN.read_text())
    joints = np.asarray([e["joints"] for e in entries], dtype=np.float64) - 1.0  # 1-based -> 0-based
    vis = np.asarray([e["joints_vis"] for e in entries])
    return joints, vis


def test_pckh_of_gt_is_100_with_stand_in(mpii):
    joints, vis = mpii
    sizes = head_sizes_from_head_segment(joints, vis)
    np.testing.assert_allclose(sizes * 0.6, np.linalg.norm(joints[:, 9] - joints[:, 8], axis=-1))
    res = pckh(joints, joints, vis, head_sizes=sizes)
    assert res.mean == 100.0 and res.mean_at_0_1 == 100.0
    assert list(res.summary) == ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1"]
    np.testing.assert_array_equal(res.joint_count, vis.sum(0))
    assert np.all(res.per_joint == 100.0)
    assert res.per_joint_named()["head_top"] == 100.0


def test_pckh_shifted_predictions(mpii):
    joints, vis = mpii
    sizes = head_sizes_from_head_segment(joints, vis)
    seg = 0.6 * sizes  # the normaliser, pixels
    direction = np.array([0.6, 0.8])  # unit vector

    # every joint off by 0.3 normaliser: correct at 0.5, wrong at 0.11
    preds = joints + 0.3 * seg[:, None, None] * direction
    res = pckh(preds, joints, vis, head_sizes=sizes)
    assert res.mean == pytest.approx(100.0) and res.mean_at_0_1 == 0.0

    # off by 0.7: wrong at 0.5 too; a lower threshold is stricter
    far = joints + 0.7 * seg[:, None, None] * direction
    assert pckh(far, joints, vis, head_sizes=sizes).mean == 0.0
    assert pckh(preds, joints, vis, head_sizes=sizes, threshold=0.2).mean == 0.0

    # only the ankles wrong: Mean drops by their share of the counted (non pelvis/thorax) joints
    ankles = joints.copy()
    ankles[:, [0, 5]] += 50.0 * seg[:, None, None]
    res = pckh(ankles, joints, vis, head_sizes=sizes)
    counts = vis.sum(0)
    counted = counts.sum() - counts[6] - counts[7]
    assert counts[0] == 3  # two mpii_mini persons have no labelled ankles
    assert res.mean == pytest.approx(100.0 * (1 - (counts[0] + counts[5]) / counted))
    assert res.summary["Ankle"] == 0.0 and res.summary["Knee"] == 100.0

    # pelvis and thorax are reported per joint but left out of the Mean
    torso = joints.copy()
    torso[:, [6, 7]] += 50.0 * seg[:, None, None]
    res = pckh(torso, joints, vis, head_sizes=sizes)
    assert res.per_joint[6] == 0.0 and res.per_joint[7] == 0.0 and res.mean == 100.0

    # invisible joints do not count, however wrong
    hidden = joints.copy()
    hidden[vis == 0] += 1e4
    assert pckh(hidden, joints, vis, head_sizes=sizes).mean == 100.0


def test_pckh_head_boxes_and_mean_at_0_1_threshold():
    # one person, head box 30 x 40 px -> diagonal 50 -> normaliser 0.6 * 50 = 30 px
    gt = np.zeros((1, 16, 2))
    vis = np.ones((1, 16))
    boxes = np.array([[[10.0, 20.0], [40.0, 60.0]]])
    preds = gt.copy()
    preds[0, 0, 0] = 0.5 * 30.0  # exactly at the threshold: correct (<=)
    preds[0, 1, 0] = 0.5 * 30.0 + 1e-6
    preds[0, 2, 0] = 0.105 * 30.0  # within the official "Mean@0.1" threshold of 0.11
    res = pckh(preds, gt, vis, boxes)
    assert res.per_joint[0] == 100.0 and res.per_joint[1] == 0.0
    assert res.mean == pytest.approx(100.0 * 13 / 14)
    assert MEAN_AT_0_1_THRESHOLD == pytest.approx(0.11)
    assert res.mean_at_0_1 == pytest.approx(100.0 * 12 / 14)  # joints 0 and 1 miss, joint 2 counts
    # head_sizes given directly = head-box diagonal
    same = pckh(preds, gt, vis, head_sizes=np.array([50.0]))
    np.testing.assert_array_equal(same.per_joint, res.per_joint)


def test_pckh_missing_head_boxes_is_an_error(mpii):
    joints, vis = mpii
    with pytest.raises(ValueError, match="needs head boxes.*head_sizes_from_head_segment"):
        pckh(joints, joints, vis)


def test_pckh_bad_input(mpii):
    joints, vis = mpii
    sizes = head_sizes_from_head_segment(joints, vis)
    with pytest.raises(ValueError, match="preds must have shape"):
        pckh(joints[:, :15], joints, vis, head_sizes=sizes)
    with pytest.raises(ValueError, match="preds has 4 poses but joints_gt has 5"):
        pckh(joints[:4], joints, vis, head_sizes=sizes)
    with pytest.raises(ValueError, match="joints_vis must have shape"):
        pckh(joints, joints, vis[:, :15], head_sizes=sizes)
    with pytest.raises(ValueError, match="headboxes must have shape"):
        pckh(joints, joints, vis, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="not both"):
        pckh(joints, joints, vis, np.ones((5, 2, 2)), head_sizes=sizes)
    with pytest.raises(ValueError, match=r"head sizes must be finite and > 0; bad for person index\(es\) \[0\]"):
        boxes = np.tile(np.array([[0.0, 0.0], [10.0, 10.0]]), (5, 1, 1))
        boxes[0, 1] = boxes[0, 0]  # a degenerate head box
        pckh(joints, joints, vis, boxes)
    with pytest.raises(ValueError, match="head_sizes must have shape"):
        pckh(joints, joints, vis, head_sizes=sizes[:3])
    no_head = vis.copy()
    no_head[2, 9] = 0
    with pytest.raises(ValueError, match=r"head_top and upper_neck.*\[2\]"):
        head_sizes_from_head_segment(joints, no_head)


def test_oks_pairs_is_the_diagonal_of_the_matrix():
    from tokenpose.evaluation.oks import oks_matrix, oks_pairs

    rng = np.random.default_rng(3)
    a = rng.uniform(0, 200, (5, 17, 2))
    b = a + rng.normal(0, 6, a.shape)
    areas = rng.uniform(2000, 9000, 5)
    full = np.array([oks_matrix(a[i:i + 1], b[i:i + 1], areas[i:i + 1], areas[i:i + 1])[0, 0] for i in range(5)])
    assert np.allclose(oks_pairs(a, b, areas), full, rtol=0, atol=1e-12)
    assert np.allclose(oks_pairs(a, a, areas), 1.0)
    with pytest.raises(ValueError, match="must pair up"):
        oks_pairs(a, b[:4], areas)
