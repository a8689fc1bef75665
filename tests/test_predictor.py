"""PosePredictor, the evaluation runner, the detector and the drawing, on coco_mini."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_engines import build_artifacts, peaked_model, with_edited_manifest

from tokenpose.data.coco import CocoKeypoints
from tokenpose.data.heatmaps import HeatmapCodec
from tokenpose.data.transforms import (
    ImageReadError,
    affine_points,
    get_affine_transforms,
    read_image,
)
from tokenpose.engines import PosePrediction, PosePredictor, load_engine
from tokenpose.engines.chunking import auto_chunk_size, best_chunk_size, cache_file, candidate_sizes, engine_key
from tokenpose.predict.detector import (
    WHOLE_IMAGE_SCORE,
    HogPersonDetector,
    detect_people,
    hog_available,
)
from tokenpose.predict.drawing import draw_poses
from tokenpose.engines.torch_engine import TorchEngine
from tokenpose.errors import InputShapeError, TokenPoseError
from tokenpose.evaluation import CocoEvaluator
from tokenpose.evaluation.runner import evaluate, open_dataset, predict_dataset

COCO_MINI = Path(__file__).parent / "fixtures" / "coco_mini"
ANN = COCO_MINI / "annotations" / "person_keypoints_mini.json"
IMAGE = COCO_MINI / "images" / "000000000785.jpg"  # 640x425, one person


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return build_artifacts(tmp_path_factory.mktemp("predictor"))


class CountingEngine:
    """A real engine that also counts its calls and batch sizes."""

    def __init__(self, engine) -> None:
        self.inner = engine
        self.name, self.precision, self.config, self.meta = engine.name, engine.precision, engine.config, engine.meta
        self.manifest, self.min_batch, self.max_batch = engine.manifest, engine.min_batch, engine.max_batch
        self.batches: list[int] = []

    def __call__(self, images):
        self.batches.append(len(images))
        return self.inner(images)


def coco_pycocotools(results: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ANN))
        ev = COCOeval(gt, gt.loadRes(results), "keypoints")
        ev.params.imgIds = sorted({r["image_id"] for r in results})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def gt_through_codec() -> tuple[CocoKeypoints, np.ndarray, np.ndarray]:
    """Ground truth -> heatmap coords -> encode -> decode -> image coords, for every GT person."""
    ds = CocoKeypoints(ANN, COCO_MINI / "images")
    rec = ds.records
    codec = HeatmapCodec((256, 192), (64, 48), 2.0)
    mats = get_affine_transforms(rec.centers, rec.scales, 0.0, (48, 64))
    joints_hm = affine_points(rec.joints, mats)
    targets, _ = codec.encode(joints_hm, rec.joints_vis)  # unlabelled joints: empty maps
    keypoints, maxvals = codec.decode(targets, rec.centers, rec.scales)
    return ds, keypoints, maxvals


def test_ground_truth_through_encode_decode_gives_ap_near_one():
    ds, keypoints, maxvals = gt_through_codec()
    rec = ds.records
    assert len(rec) >= 150
    ev = CocoEvaluator(ANN)
    ev.add(rec.image_ids, keypoints, maxvals, rec.centers, rec.scales, rec.box_scores)
    # Images whose labelled joints all lie inside their crops' heatmaps: what a top-down model
    # can output at all. (In 11 of 182 coco_mini persons a labelled joint, mostly a foot, lies
    # outside the 1.25x-padded GT box; no crop-based prediction can reach it.)
    mats = get_affine_transforms(rec.centers, rec.scales, 0.0, (48, 64))
    hm = affine_points(rec.joints, mats)
    inside = ((hm >= 0) & (hm <= [47, 63])).all(-1) | (rec.joints_vis == 0)
    bad_images = set(rec.image_ids[~inside.all(1)].tolist())
    representable = sorted(set(rec.image_ids.tolist()) - bad_images)
    assert len(representable) >= 55
    assert ev.evaluate(representable)["AP"] >= 0.99
    assert ev.evaluate()["AP"] >= 0.985  # all images: 0.989, the top-down ceiling on coco_mini


def test_evaluator_ap_equals_pycocotools_on_the_same_results(tmp_path):
    ds, keypoints, maxvals = gt_through_codec()
    rec = ds.records
    rng = np.random.default_rng(0)
    noisy = keypoints + rng.normal(0, 6.0, keypoints.shape)  # a realistic AP, not 1.0
    ev = CocoEvaluator(ANN)
    ev.add(rec.image_ids, noisy, maxvals * rng.uniform(0.3, 1.0, maxvals.shape), rec.centers, rec.scales,
           rec.box_scores)
    stats = ev.evaluate()
    path = ev.write_results(tmp_path / "results.json")
    direct = coco_pycocotools(json.loads(path.read_text()))
    assert 0.2 < stats["AP"] < 0.99
    np.testing.assert_allclose(list(stats.values()), direct, atol=1e-12)


def test_runner_results_file_scores_the_same_with_pycocotools(artifacts, tmp_path):
    engine = load_engine(artifacts["onnx"])
    data = open_dataset(COCO_MINI, engine.config, max_images=6)
    report = evaluate(engine, data, results_file=tmp_path / "res.json")
    direct = coco_pycocotools(json.loads((tmp_path / "res.json").read_text()))
    assert report.num_persons == len(data.records) and report.num_images == 6
    np.testing.assert_allclose(list(report.metrics.values()), direct, atol=1e-12)


def test_same_metrics_from_torch_and_onnx_engines(artifacts):
    results = []
    for path in (artifacts["pth"], artifacts["onnx"]):
        engine = load_engine(path)
        results.append(evaluate(engine, open_dataset(COCO_MINI, engine.config, max_images=6), flip_test=True).metrics)
    assert results[0] == pytest.approx(results[1], abs=1e-9)


def test_predict_one_image_batches_and_skips_bad_boxes(artifacts):
    engine = CountingEngine(load_engine(artifacts["pth"], max_batch=2))
    predictor = PosePredictor(engine)
    boxes = [[277, 45, 225, 333], [10, 10, 0, 50], [700, 10, 40, 40], [100, 50, 80, 160], [np.nan, 0, 5, 5],
             [600, 300, 100, 200]]  # the last one sticks out of the image but overlaps it: kept
    with pytest.warns(UserWarning, match=r"skipped 3 box\(es\).*#1.*#2.*#4"):
        pred = predictor.predict(str(IMAGE), boxes, box_scores=[0.9, 0.1, 0.2, 0.8, 0.5, 0.7])
    assert isinstance(pred, PosePrediction)
    assert len(pred) == 3 and pred.skipped == [1, 2, 4]
    assert engine.batches == [2, 1]
    assert pred.keypoints.shape == (3, 17, 2) and pred.scores.shape == (3, 17)
    np.testing.assert_array_equal(pred.box_scores, [0.9, 0.8, 0.7])
    assert pred.image_hw == (425, 640)
    coco = pred.to_coco(785)
    assert len(coco) == 3 and len(coco[0]["keypoints"]) == 51 and coco[0]["image_id"] == 785


def test_predict_list_of_images_shares_batches(artifacts):
    engine = CountingEngine(load_engine(artifacts["pth"], max_batch=4))
    predictor = PosePredictor(engine)
    image = read_image(IMAGE)
    boxes_a = np.array([[277, 45, 225, 333], [100, 50, 80, 160], [300, 100, 100, 200]], dtype=float)
    boxes_b = np.array([[50, 50, 200, 300], [250, 60, 120, 240]], dtype=float)
    preds = predictor.predict([image, image[:, ::-1].copy()], [boxes_a, boxes_b])
    assert engine.batches == [4, 1]  # 5 people of 2 images: one full chunk, then the rest
    alone = PosePredictor(load_engine(artifacts["pth"])).predict(image[:, ::-1].copy(), boxes_b)
    np.testing.assert_allclose(preds[1].keypoints, alone.keypoints, atol=1e-6)
    assert [len(p) for p in preds] == [3, 2]


def test_flip_test_is_the_official_average(artifacts):
    engine = CountingEngine(load_engine(artifacts["pth"]))
    box = np.array([[277, 45, 225, 333]], dtype=float)
    flipped = PosePredictor(engine, flip_test=True).predict(str(IMAGE), box)
    assert engine.batches == [2]  # the crop and its mirror image in one call
    plain = PosePredictor(engine).predict(str(IMAGE), box)
    inputs = PosePredictor(engine).crops([read_image(IMAGE)], np.zeros(1, dtype=int), plain.centers, plain.scales)
    hm = engine.inner(inputs)
    hm_flip = engine.inner(np.ascontiguousarray(inputs[..., ::-1]))
    codec = HeatmapCodec.from_config(engine.config)
    want, want_mv = codec.decode(codec.flip_test(hm, hm_flip, engine.config.flip_pairs), plain.centers, plain.scales)
    np.testing.assert_allclose(flipped.keypoints, want, atol=1e-9)
    np.testing.assert_allclose(flipped.scores, want_mv[..., 0], atol=1e-7)


class MinBatchEngine:
    """A real torch engine behind the batch limits of a TensorRT profile / AOTInductor package:
    it rejects batches below min_batch, as AotiEngine and TensorRTEngine do."""

    def __init__(self, engine, min_batch: int, max_batch: int) -> None:
        self.inner = engine
        self.name, self.precision, self.config, self.manifest = engine.name, engine.precision, engine.config, engine.manifest
        self.meta = dataclasses.replace(engine.meta, min_batch=min_batch, max_batch=max(min_batch, max_batch))
        self.min_batch, self.max_batch = min_batch, max_batch
        self.batches: list[int] = []

    def __call__(self, images):
        if not self.min_batch <= len(images) <= self.max_batch:
            raise TokenPoseError(f"batch {len(images)} outside the profile {self.min_batch}-{self.max_batch}")
        self.batches.append(len(images))
        return self.inner(images)


@pytest.mark.parametrize("n_boxes", [1, 2, 4])
@pytest.mark.parametrize("flip", [False, True])
def test_short_chunks_are_padded_to_the_engines_min_batch(artifacts, n_boxes, flip):
    engine = MinBatchEngine(load_engine(artifacts["pth"]), min_batch=3, max_batch=4)
    boxes = np.array([[277, 45, 225, 333], [100, 50, 80, 160], [300, 100, 100, 200], [20, 30, 150, 250]])[:n_boxes]
    pred = PosePredictor(engine, flip_test=flip, batch_size=1).predict(str(IMAGE), boxes)
    assert engine.batches and all(3 <= b <= 4 for b in engine.batches)
    assert PosePredictor(engine, batch_size=1).batch_size == 3  # raised to the minimum
    want = PosePredictor(load_engine(artifacts["pth"]), flip_test=flip).predict(str(IMAGE), boxes)
    assert len(pred) == n_boxes
    np.testing.assert_allclose(pred.keypoints, want.keypoints, atol=1e-4)
    np.testing.assert_allclose(pred.scores, want.scores, atol=1e-5)
    if not flip:
        assert engine.batches == {1: [3], 2: [3], 4: [3, 3]}[n_boxes]  # 4 = 3 + (1 padded to 3)


def test_min_batch_above_max_batch_is_an_error(artifacts):
    with pytest.raises(TokenPoseError, match="min_batch 5 exceeds its max_batch 4"):
        PosePredictor(MinBatchEngine(load_engine(artifacts["pth"]), min_batch=5, max_batch=4))


def test_predict_without_boxes_returns_empty_without_calling_the_engine(artifacts):
    engine = CountingEngine(load_engine(artifacts["pth"]))
    pred = PosePredictor(engine).predict(str(IMAGE), np.zeros((0, 4)))
    assert len(pred) == 0 and engine.batches == [] and pred.keypoints.shape == (0, 17, 2)


def test_bad_images_give_clear_errors(artifacts, tmp_path):
    predictor = PosePredictor(load_engine(artifacts["pth"]))
    box = [[0, 0, 10, 10]]
    with pytest.raises(InputShapeError, match="empty image"):
        predictor.predict(np.zeros((0, 0, 3), dtype=np.uint8), box)
    with pytest.raises(InputShapeError, match="uint8"):
        predictor.predict(np.zeros((20, 20, 3), dtype=np.float32), box)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        predictor.predict(tmp_path / "empty.jpg", box)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError):
        predictor.predict(tmp_path / "junk.jpg", box)
    with pytest.raises(InputShapeError, match="2 images but 1 box lists"):
        predictor.predict([np.zeros((20, 20, 3), np.uint8)] * 2, [box])
    grey = predictor.predict(np.full((64, 48), 128, dtype=np.uint8), [[0, 0, 48, 64]])
    assert len(grey) == 1


def test_non_finite_heatmaps_are_an_error_not_a_result():
    model = peaked_model()
    with torch.no_grad():
        [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1].bias[0] = float("nan")
    predictor = PosePredictor(TorchEngine(model))
    with pytest.raises(TokenPoseError, match="non-finite heatmaps"):
        predictor.predict(str(IMAGE), [[277, 45, 225, 333]])


class RecordingEngine(CountingEngine):
    """A real engine that also keeps the inputs of its last call."""

    def __call__(self, images):
        self.last_input = images.copy()
        return super().__call__(images)


def expected_crop(image_bgr, center, scale, input_hw, mean_rgb, std_rgb, order="RGB") -> np.ndarray:
    """One model input (3, H, W) written out from the definition: warp, /255, (x - mean) / std."""
    h, w = input_hw
    mat = get_affine_transforms(center[None], scale[None], 0.0, (w, h))[0]
    crop = cv2.warpAffine(image_bgr, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    rgb = crop[..., ::-1].astype(np.float64) / 255.0
    x = ((rgb - np.asarray(mean_rgb)) / np.asarray(std_rgb)).transpose(2, 0, 1)
    return x if order == "RGB" else x[::-1]


def test_predictor_normalises_with_the_engines_own_mean_std_and_colour_order(artifacts, tmp_path):
    box = np.array([[277.0, 45.0, 225.0, 333.0]])
    image = read_image(IMAGE)
    default = RecordingEngine(load_engine(artifacts["onnx"]))
    ref = PosePredictor(default).predict(image, box)
    mean, std = (0.3, 0.5, 0.6), (0.2, 0.25, 0.3)
    for order in ("RGB", "BGR"):
        folder = tmp_path / order
        folder.mkdir()
        path = with_edited_manifest(artifacts, folder, mean_rgb=list(mean), std_rgb=list(std), color_order=order)
        engine = RecordingEngine(load_engine(path))
        assert (engine.meta.mean_rgb, engine.meta.std_rgb, engine.meta.color_order) == (mean, std, order)
        pred = PosePredictor(engine).predict(image, box)
        want = expected_crop(image, pred.centers[0], pred.scales[0], engine.meta.input_hw, mean, std, order)
        np.testing.assert_allclose(engine.last_input[0], want, atol=1e-4)
        assert np.abs(engine.last_input - default.last_input).max() > 0.5  # not the ImageNet statistics
        assert np.abs(pred.keypoints - ref.keypoints).max() > 0  # the model saw other numbers
    np.testing.assert_allclose(default.last_input[0], expected_crop(
        image, ref.centers[0], ref.scales[0], default.meta.input_hw, default.meta.mean_rgb, default.meta.std_rgb),
        atol=1e-4)


def test_rgb_images_with_color_rgb_give_the_bgr_keypoints(artifacts):
    predictor = PosePredictor(RecordingEngine(load_engine(artifacts["pth"])))
    bgr = read_image(IMAGE)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    boxes = np.array([[277, 45, 225, 333], [100, 50, 80, 160]], dtype=float)
    want = predictor.predict(bgr, boxes)
    got = predictor.predict(rgb, boxes, color="rgb")
    np.testing.assert_array_equal(got.keypoints, want.keypoints)
    np.testing.assert_array_equal(got.scores, want.scores)
    bgr_input = predictor.engine.last_input
    predictor.predict(rgb, boxes)  # the RGB array taken for BGR: other model inputs
    assert np.abs(predictor.engine.last_input - bgr_input).max() > 0.5
    [listed] = predictor.predict([rgb], [boxes], color="rgb")
    np.testing.assert_array_equal(listed.keypoints, want.keypoints)
    with pytest.raises(TokenPoseError, match="color must be 'bgr' or 'rgb', got 'hsv'"):
        predictor.predict(bgr, boxes, color="hsv")


def test_boxes_are_n_by_4_or_n_by_5_with_the_score(artifacts):
    engine = CountingEngine(load_engine(artifacts["pth"]))
    predictor = PosePredictor(engine)
    boxes = np.array([[277, 45, 225, 333], [100, 50, 80, 160], [300, 100, 100, 200], [20, 30, 150, 250]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    want = predictor.predict(str(IMAGE), boxes, scores)
    got = predictor.predict(str(IMAGE), np.column_stack([boxes, scores]))  # (4, 5): four people, not five
    assert len(got) == 4
    np.testing.assert_array_equal(got.box_scores, scores)
    np.testing.assert_array_equal(got.boxes, boxes)
    np.testing.assert_array_equal(got.keypoints, want.keypoints)
    np.testing.assert_allclose(got.scores_person, want.scores_person)
    calls = len(engine.batches)
    with pytest.raises(InputShapeError, match="carry their scores in the fifth column"):
        predictor.predict(str(IMAGE), np.column_stack([boxes, scores]), scores)
    with pytest.raises(InputShapeError, match="4 boxes but box scores of shape \\(3,\\)"):
        predictor.predict(str(IMAGE), boxes, scores[:3])
    assert len(engine.batches) == calls  # rejected before any engine call


@pytest.mark.parametrize(("image", "boxes", "message"), [
    (None, [[0, 0, 10, 10]], "expected an \\(H, W, 3\\) BGR uint8 image or a path, got None"),
    ("image", None, "image 0: boxes must be \\(N, 4\\) rows of x, y, w, h or \\(N, 5\\) .* got None"),
    ("image", np.zeros((2, 3)), "image 0: boxes must be \\(N, 4\\) .* got shape \\(2, 3\\)"),
    ("image", np.zeros((4, 6)), "got shape \\(4, 6\\)"),
    ("image", [277, 45, 225, 333], "got shape \\(4,\\)"),
    ("image", np.zeros((1, 4, 1)), "got shape \\(1, 4, 1\\)"),
    ("image", [[1, 2, 3, 4], [1, 2]], "not a numeric array"),
    (["image", "image"], np.zeros((2, 4)), "2 images need a list of 2 box arrays, got ndarray"),
    ([None], [np.zeros((1, 4))], "got None"),
])
def test_missing_images_and_misshaped_boxes_are_input_shape_errors(artifacts, image, boxes, message):
    engine = CountingEngine(load_engine(artifacts["pth"]))
    real = read_image(IMAGE)
    image = [real if im == "image" else im for im in image] if isinstance(image, list) else \
        (real if isinstance(image, str) else image)
    with pytest.raises(InputShapeError, match=message):
        PosePredictor(engine).predict(image, boxes)
    assert engine.batches == []


def test_detector_finds_boxes_or_falls_back_to_the_whole_image():
    image = read_image(IMAGE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boxes, scores = detect_people(image)
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) >= 1
    if hog_available():
        found, _ = HogPersonDetector()(image)
        assert (found[:, 2:] > 0).all()
    else:
        np.testing.assert_array_equal(boxes, [[0, 0, 640, 425]])
        assert scores[0] == WHOLE_IMAGE_SCORE
        with pytest.raises(TokenPoseError, match="no HOG people detector"):
            detect_people(image, whole_image_fallback=False)


def test_draw_poses_marks_the_joints():
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    kpts = np.tile(np.array([[100.0, 100.0]]), (17, 1))[None]
    kpts[0, 5], kpts[0, 6] = (50, 50), (150, 50)  # shoulders: a visible link
    scores = np.ones((1, 17))
    scores[0, 16] = 0.0
    out = draw_poses(image, kpts, scores, boxes=np.array([[20, 20, 160, 160]]))
    assert image.sum() == 0 and out.sum() > 0  # input untouched
    assert out[50, 100].any()  # on the shoulder-shoulder line
    with pytest.raises(ValueError, match="no skeleton for 5 joints"):
        draw_poses(image, np.zeros((1, 5, 2)), np.ones((1, 5)))


def test_engines_compared_on_the_same_crops_each_get_their_own_normalisation(artifacts, tmp_path):
    """`validate` / `predict_dataset` share the crop geometry between engines, never the statistics."""
    edited = with_edited_manifest(artifacts, tmp_path, mean_rgb=[0.3, 0.5, 0.6], std_rgb=[0.2, 0.25, 0.3])
    default, other = RecordingEngine(load_engine(artifacts["onnx"])), RecordingEngine(load_engine(edited))
    data = open_dataset(COCO_MINI, default.meta, max_images=2)
    both = predict_dataset([PosePredictor(default), PosePredictor(other)], data)
    alone = [predict_dataset([PosePredictor(load_engine(p))], data)[0] for p in (artifacts["onnx"], edited)]
    for (kpts, mv), (want_k, want_mv) in zip(both, alone):
        np.testing.assert_array_equal(kpts, want_k)
        np.testing.assert_array_equal(mv, want_mv)
    assert np.abs(default.last_input - other.last_input).max() > 0.5


def test_best_chunk_size_is_the_smallest_within_tolerance_of_the_fastest():
    assert best_chunk_size({1: 10.0, 2: 12.0, 8: 12.5, 32: 9.0}) == 2  # 12.0 is within 5% of 12.5
    assert best_chunk_size({1: 10.0, 2: 11.0, 8: 12.5}) == 8
    assert best_chunk_size({4: 3.0}) == 4
    assert candidate_sizes(1, 32) == [1, 2, 4, 8, 16, 32]
    assert candidate_sizes(3, 12) == [4, 8, 12]
    with pytest.raises(ValueError, match="no measured batch"):
        best_chunk_size({})


def test_auto_chunk_size_measures_once_per_engine_and_machine(artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    engine = load_engine(artifacts["pth"])
    calls = []

    def table(eng, sizes):  # an injected measurement: batch 4 is fastest per image on this "machine"
        calls.append(list(sizes))
        return {b: 20.0 if b == 4 else 10.0 + b / 8 for b in sizes}

    assert auto_chunk_size(engine, 32, measure=table) == 4
    assert calls == [[1, 2, 4, 8, 16, 32]]
    stored = json.loads(cache_file().read_text())["entries"]
    assert list(stored) == [engine_key(engine)] and engine.manifest["sha256"] in engine_key(engine)
    assert auto_chunk_size(engine, 32, measure=table) == 4 and len(calls) == 1  # read from the cache
    assert auto_chunk_size(engine, 8, measure=table) == 4 and len(calls) == 1  # a subset of what is cached
    assert PosePredictor(engine, batch_size="auto").batch_size == 4  # the predictor reads the same cache
    assert PosePredictor(engine, batch_size=16).batch_size == 16  # an explicit size is kept exactly
    assert PosePredictor(engine).batch_size == 32  # the default is unchanged


def test_auto_chunk_size_keeps_gpu_engines_at_their_largest_batch_and_takes_bench_tables(artifacts):
    engine = load_engine(artifacts["pth"])
    gpu = CountingEngine(engine)
    gpu.name = "tensorrt"
    assert auto_chunk_size(gpu, 64, measure=lambda *_: pytest.fail("a GPU engine is never timed")) == 64
    bench_table = {1: 5.0, 8: 7.5, 32: 6.0, 64: 9.0}  # e.g. a tokenpose-bench result's images/s
    assert PosePredictor(MinBatchEngine(engine, min_batch=1, max_batch=32), batch_size=bench_table).batch_size == 8
    with pytest.raises(TokenPoseError, match="no batch between 1 and 32"):
        PosePredictor(MinBatchEngine(engine, min_batch=1, max_batch=32), batch_size={64: 9.0})
    with pytest.raises(TokenPoseError, match="'fastest'"):
        PosePredictor(engine, batch_size="fastest")


def test_measured_chunk_size_runs_the_real_engine(artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    engine = CountingEngine(load_engine(artifacts["pth"]))
    size = PosePredictor(engine, batch_size="auto").batch_size  # tiny model: a fraction of a second
    assert size in candidate_sizes(1, 32)
    assert sorted(set(engine.batches)) == candidate_sizes(1, 32)
    (entry,) = json.loads(cache_file().read_text())["entries"].values()
    table = {int(b): v for b, v in entry["images_per_s"].items()}
    assert sorted(table) == candidate_sizes(1, 32) and best_chunk_size(table) == size
