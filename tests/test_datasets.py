"""Top-down COCO and MPII datasets on the real fixtures (tokenpose.data.coco / tokenpose.data.mpii)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenpose.data.coco import CocoKeypoints, DatasetError
from tokenpose.data.heatmaps import HeatmapCodec
from tokenpose.data.mpii import MpiiKeypoints
from tokenpose.data.transforms import (
    affine_points,
    box_to_center_scale,
    crop_person,
    flip_image,
    get_affine_transform,
    normalize_image,
    preprocess_crops,
    read_image,
)
from tokenpose.models.config import get_config

FIXTURES = Path(__file__).parent / "fixtures"
COCO_ROOT = COCO_MINI = FIXTURES / "coco_mini"
COCO_JSON = COCO_ROOT / "annotations" / "person_keypoints_mini.json"
COCO_IMAGES = COCO_ROOT / "images"
COCO_DETS = COCO_ROOT / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person_subset.json"
MPII_ROOT = FIXTURES / "mpii_mini"
MPII_JSON = MPII_ROOT / "annotations" / "mpii_mini.json"
MPII_IMAGES = MPII_ROOT / "images"


@pytest.fixture(scope="module")
def coco_json():
    return json.loads(COCO_JSON.read_text())


@pytest.fixture(scope="module")
def coco_eval():
    return CocoKeypoints(COCO_JSON, COCO_IMAGES)


def _usable_gt(coco_json):
    return [a for a in coco_json["annotations"]
            if a["category_id"] == 1 and not a["iscrowd"] and a["area"] > 0 and max(a["keypoints"]) > 0]


def test_coco_gt_length_and_sample(coco_json, coco_eval):
    usable = _usable_gt(coco_json)
    assert len(coco_eval) == len(usable) == 182
    sample = coco_eval[5]
    ann = usable[5]
    assert sample["image"].shape == (3, 256, 192) and sample["image"].dtype == torch.float32
    assert sample["target"].shape == (17, 64, 48) and sample["target"].dtype == torch.float32
    assert sample["target_weight"].shape == (17, 1)
    assert (sample["ann_id"], sample["image_id"]) == (ann["id"], ann["image_id"])
    assert sample["rotation"] == 0.0 and not sample["flipped"] and sample["box_score"] == 1.0
    kpts = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
    np.testing.assert_allclose(sample["joints"], kpts[:, :2])
    np.testing.assert_array_equal(sample["joints_vis"], np.minimum(kpts[:, 2], 1))
    center, scale = box_to_center_scale(ann["bbox"], 0.75)  # this box lies inside its image
    np.testing.assert_allclose(sample["center"], center)
    np.testing.assert_allclose(sample["scale"], scale)
    # The eval crop is exactly what the inference engines will feed the model.
    expected = preprocess_crops(read_image(sample["image_path"]), center[None], scale[None], (256, 192))[0]
    np.testing.assert_array_equal(sample["image"].numpy(), expected)


def test_coco_skips_crowd_and_unlabelled(coco_json, coco_eval):
    crowd = {a["id"] for a in coco_json["annotations"] if a["iscrowd"]}
    empty = {a["id"] for a in coco_json["annotations"] if a["num_keypoints"] == 0}
    ids = set(coco_eval.records.ann_ids.tolist())
    assert crowd and empty and not ids & (crowd | empty)


def test_coco_targets_decode_back_to_the_annotation(coco_eval):
    codec = HeatmapCodec.from_config(get_config("t"))
    batch = [coco_eval[i] for i in range(0, 40, 4)]
    target = torch.stack([s["target"] for s in batch]).numpy()
    weight = np.stack([s["target_weight"].numpy()[:, 0] for s in batch])
    centers = np.stack([s["center"] for s in batch])
    scales = np.stack([s["scale"] for s in batch])
    decoded, _ = codec.decode(target, centers, scales)
    joints = np.stack([s["joints"] for s in batch])
    hm = affine_points(joints, np.stack([get_affine_transform(c, s, 0, (48, 64)) for c, s in zip(centers, scales)]))
    interior = (weight > 0) & (hm[..., 0] > 3) & (hm[..., 0] < 44) & (hm[..., 1] > 3) & (hm[..., 1] < 60)
    assert interior.sum() > 50
    pixels_per_hm = 200 * scales[:, 0] / 47
    err = np.abs(decoded - joints)[interior] / np.repeat(pixels_per_hm[:, None], 17, 1)[interior][:, None]
    assert err.max() < 0.05


def test_coco_detections():
    dets = json.loads(COCO_DETS.read_text())
    ds = CocoKeypoints(COCO_JSON, COCO_IMAGES, detections=COCO_DETS)
    assert len(ds) == sum(d["category_id"] == 1 for d in dets) == 118
    strict = CocoKeypoints(COCO_JSON, COCO_IMAGES, detections=COCO_DETS, det_score_threshold=0.5)
    assert len(strict) == sum(d["score"] >= 0.5 for d in dets) < len(ds)
    sample = ds[3]
    assert sample["ann_id"] == -1 and sample["image_id"] == dets[3]["image_id"]
    assert sample["box_score"] == pytest.approx(dets[3]["score"])
    center, scale = box_to_center_scale(dets[3]["bbox"], 0.75)
    np.testing.assert_allclose(sample["center"], center)
    np.testing.assert_allclose(sample["scale"], scale)
    assert not sample["target_weight"].any() and not sample["target"].any()


def test_coco_train_is_deterministic_and_augments(coco_eval):
    train = CocoKeypoints(COCO_JSON, COCO_IMAGES, train=True, seed=3)
    again = CocoKeypoints(COCO_JSON, COCO_IMAGES, train=True, seed=3)
    other_seed = CocoKeypoints(COCO_JSON, COCO_IMAGES, train=True, seed=4)
    a, b, c = train[7], again[7], other_seed[7]
    for key in ("image", "target", "target_weight"):
        assert torch.equal(a[key], b[key])
    np.testing.assert_array_equal(a["center"], b["center"])
    assert a["rotation"] == b["rotation"] and a["flipped"] == b["flipped"]
    assert not torch.equal(a["image"], c["image"])
    train.set_epoch(1)
    assert not torch.equal(train[7]["image"], a["image"])

    samples = [train[i] for i in range(0, 182, 6)]
    assert any(s["rotation"] != 0 for s in samples) and any(s["rotation"] == 0 for s in samples)
    assert any(s["flipped"] for s in samples) and any(not s["flipped"] for s in samples)
    changed = [not torch.equal(s["image"], coco_eval[i * 6]["image"]) for i, s in enumerate(samples)]
    assert all(changed)


def test_coco_train_targets_follow_augmented_joints():
    train = CocoKeypoints(COCO_JSON, COCO_IMAGES, train=True, seed=11)
    checked = flipped = 0
    for i in range(0, 120, 3):
        s = train[i]
        mat = get_affine_transform(s["center"], s["scale"], s["rotation"], (48, 64))
        hm = affine_points(s["joints"], mat)
        weight = s["target_weight"].numpy()[:, 0]
        inside = (weight > 0) & (hm[:, 0] > 1) & (hm[:, 0] < 46) & (hm[:, 1] > 1) & (hm[:, 1] < 62)
        for j in np.nonzero(inside)[0]:
            y, x = np.unravel_index(s["target"][j].argmax().item(), (64, 48))
            assert abs(x - hm[j, 0]) <= 0.5 + 1e-9 and abs(y - hm[j, 1]) <= 0.5 + 1e-9
            checked += 1
        flipped += s["flipped"]
        if s["flipped"]:
            # left/right labels were swapped with the mirror: the left shoulder (5) of the mirrored
            # image is the original right shoulder (6), mirrored.
            orig = train.records
            width = read_image(s["image_path"]).shape[1]
            if orig.joints_vis[i, 6] > 0:
                np.testing.assert_allclose(s["joints"][5], [width - 1 - orig.joints[i, 6, 0], orig.joints[i, 6, 1]])
    assert checked > 100 and flipped > 3


def test_coco_train_meta_describes_the_crop_exactly():
    # center/scale/rotation/flipped are in the frame of the (mirrored) image: re-cropping from them
    # reproduces the sample, so the trainer and visualisers can trust the meta.
    train = CocoKeypoints(COCO_JSON, COCO_IMAGES, train=True, seed=5)
    seen_flip = False
    for i in range(0, 60, 5):
        s = train[i]
        image = read_image(s["image_path"])
        if s["flipped"]:
            image = flip_image(image)
            seen_flip = True
        expected = normalize_image(crop_person(image, s["center"], s["scale"], s["rotation"], (256, 192)))
        np.testing.assert_array_equal(s["image"].numpy(), expected)
    assert seen_flip


def test_coco_gt_boxes_are_clipped_to_the_image(tmp_path, coco_json):
    data = json.loads(json.dumps(coco_json))
    ann = _usable_gt(data)[0]
    image = next(im for im in data["images"] if im["id"] == ann["image_id"])
    ann["bbox"] = [image["width"] - 50.0, 10.0, 200.0, 300.0]  # runs off the right edge
    path = tmp_path / "clipped.json"
    path.write_text(json.dumps(data))
    ds = CocoKeypoints(path, COCO_IMAGES)
    index = int(np.nonzero(ds.records.ann_ids == ann["id"])[0][0])
    center, scale = box_to_center_scale([image["width"] - 50.0, 10.0, 50.0, 300.0], 0.75)
    np.testing.assert_allclose(ds[index]["center"], center)
    np.testing.assert_allclose(ds[index]["scale"], scale)


def test_coco_from_config_rejects_mpii_variant():
    ds = CocoKeypoints.from_config(get_config("l-d24-384"), COCO_JSON, COCO_IMAGES)
    sample = ds[0]
    assert sample["image"].shape == (3, 384, 288) and sample["target"].shape == (17, 96, 72)
    with pytest.raises(ValueError, match="mpii"):
        CocoKeypoints.from_config(get_config("l-d6-mpii"), COCO_JSON, COCO_IMAGES)


@pytest.fixture
def broken_coco(tmp_path, coco_json):
    """A copy of the fixture with one missing image, one unreadable image and one box off its image."""
    images = tmp_path / "images"
    images.mkdir()
    for f in COCO_IMAGES.iterdir():
        os.symlink(f.resolve(), images / f.name)
    data = json.loads(json.dumps(coco_json))
    usable = _usable_gt(data)
    by_image = {}
    for a in usable:
        by_image.setdefault(a["image_id"], []).append(a)
    image_ids = sorted(by_image)
    missing_img = next(im for im in data["images"] if im["id"] == image_ids[0])
    missing_img["file_name"] = "does_not_exist.jpg"
    garbage_img = next(im for im in data["images"] if im["id"] == image_ids[1])
    (images / garbage_img["file_name"]).unlink()
    (images / garbage_img["file_name"]).write_bytes(b"not a jpeg at all" * 4)
    off = by_image[image_ids[2]][0]
    off["bbox"] = [missing_img["width"] + 5000.0, 10.0, 50.0, 80.0]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    n_bad = len(by_image[image_ids[0]]) + len(by_image[image_ids[1]]) + 1
    return path, images, garbage_img["file_name"], off["id"], n_bad


def test_bad_coco_data_raises_naming_the_problems(broken_coco):
    path, images, garbage_name, off_id, n_bad = broken_coco
    with pytest.raises(DatasetError) as info:
        CocoKeypoints(path, images)
    message = str(info.value)
    assert "does_not_exist.jpg" in message and garbage_name in message
    assert f"annotation {off_id}" in message and "outside" in message
    assert f"{n_bad} unusable" in message


def test_bad_coco_data_skip_warns_once_with_count(broken_coco):
    path, images, _, off_id, n_bad = broken_coco
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoKeypoints(path, images, on_bad="skip")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and f"skipped {n_bad}" in messages[0]
    assert len(ds) == 182 - n_bad
    assert off_id not in ds.records.ann_ids
    assert ds[len(ds) - 1]["image"].shape == (3, 256, 192)


def test_unreadable_image_at_load_time_names_the_file(tmp_path):
    # With the construction-time check off, a file that vanishes still fails clearly in __getitem__.
    images = tmp_path / "images"
    images.mkdir()
    ds = CocoKeypoints(COCO_JSON, images, check_images=False)
    with pytest.raises(FileNotFoundError, match=Path(ds.records.image_paths[0]).name):
        ds[0]
    with pytest.raises(ValueError, match="on_bad"):
        CocoKeypoints(COCO_JSON, COCO_IMAGES, on_bad="ignore")


def test_mpii_dataset_follows_the_hrnet_rules():
    entries = json.loads(MPII_JSON.read_text())
    headboxes = np.arange(len(entries) * 4, dtype=float).reshape(-1, 2, 2)
    ds = MpiiKeypoints(MPII_JSON, MPII_IMAGES, headboxes=headboxes)
    assert len(ds) == len(entries) == 5
    codec = HeatmapCodec.from_config(get_config("l-d6-mpii"))
    for i, e in enumerate(entries):
        s = ds[i]
        assert s["image"].shape == (3, 256, 256) and s["target"].shape == (16, 64, 64)
        cx, cy = e["center"]
        np.testing.assert_allclose(s["center"], [cx - 1, cy + 15 * e["scale"] - 1])
        np.testing.assert_allclose(s["scale"], [1.25 * e["scale"]] * 2)
        np.testing.assert_allclose(s["joints"], np.array(e["joints"]) - 1)
        np.testing.assert_array_equal(s["joints_vis"], e["joints_vis"])
        np.testing.assert_array_equal(s["headbox"], headboxes[i])
        assert s["ann_id"] == i and s["image_id"] == int(e["image"][:-4])
        decoded, _ = codec.decode(s["target"][None].numpy(), s["center"][None], s["scale"][None])
        w = s["target_weight"].numpy()[:, 0] > 0
        hm = affine_points(s["joints"], get_affine_transform(s["center"], s["scale"], 0, (64, 64)))
        inner = w & (hm > 3).all(1) & (hm < 60).all(1)
        tol = 0.05 * 200 * s["scale"][0] / 63
        assert inner.sum() >= 8 and np.abs(decoded[0] - s["joints"])[inner].max() < tol
    with pytest.raises(ValueError, match="headboxes"):
        MpiiKeypoints(MPII_JSON, MPII_IMAGES, headboxes=headboxes[:2])


def test_mpii_train_augmentation():
    ds = MpiiKeypoints(MPII_JSON, MPII_IMAGES, train=True, seed=1)
    base = ds.records.scales[:, 0]
    draws = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        draws += [(i, ds[i]) for i in range(5)]
    ratios = np.array([s["scale"][0] / base[i] for i, s in draws])
    assert ratios.min() >= 0.75 - 1e-9 and ratios.max() <= 1.25 + 1e-9 and ratios.std() > 0.05
    assert max(abs(s["rotation"]) for _, s in draws) <= 60
    assert any(s["flipped"] for _, s in draws) and any(s["rotation"] for _, s in draws)
    # No half body for MPII: the (mirrored) center always stays the annotation's.
    for i, s in draws:
        cy = s["center"][1]
        assert cy == pytest.approx(ds.records.centers[i, 1])
    ds.set_epoch(2)
    assert torch.equal(ds[1]["image"], draws[2 * 5 + 1][1]["image"])


def test_mpii_missing_image(tmp_path):
    entries = json.loads(MPII_JSON.read_text())
    entries[2]["image"] = "gone.jpg"
    path = tmp_path / "mpii.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match="gone.jpg"):
        MpiiKeypoints(path, MPII_IMAGES)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = MpiiKeypoints(path, MPII_IMAGES, on_bad="skip", headboxes=np.zeros((5, 2, 2)))
    assert len(ds) == 4 and len(ds.headboxes) == 4


def test_skip_mode_skips_images_that_fail_to_decode(tmp_path):
    # The construction check reads headers only; a file with a valid header and a broken body is
    # skipped when read (with a warning and a count) instead of stopping training.
    images = tmp_path / "images"
    shutil.copytree(COCO_MINI / "images", images)
    broken = images / "000000000785.jpg"
    broken.write_bytes(broken.read_bytes()[:64] + b"\0" * 2000)
    ann = COCO_MINI / "annotations" / "person_keypoints_mini.json"
    ds = CocoKeypoints(ann, images, on_bad="skip")
    first_bad = next(i for i, p in enumerate(ds.records.image_paths) if p.endswith("000000000785.jpg"))
    with pytest.warns(UserWarning, match=r"000000000785\.jpg.*1 so far"):
        sample = ds[first_bad]
    assert not sample["image_path"].endswith("000000000785.jpg")
    assert ds.skipped_at_load == 1
    strict = CocoKeypoints(ann, images, on_bad="raise")
    with pytest.raises(Exception, match="000000000785.jpg"):
        strict[first_bad]


def test_tiny_detection_boxes_and_ragged_keypoints_are_reported(tmp_path):
    ann = COCO_MINI / "annotations" / "person_keypoints_mini.json"
    det = [
        {"image_id": 785, "category_id": 1, "score": 0.9, "bbox": [100, 100, 0, 0]},
        {"image_id": 785, "category_id": 1, "score": 0.9, "bbox": [100, 100, 0.5, 0.5]},
        {"image_id": 785, "category_id": 1, "score": 0.9, "bbox": [100, 100, 50, 120]},
    ]
    (tmp_path / "det.json").write_text(json.dumps(det))
    with pytest.raises(DatasetError, match="smaller than one pixel"):
        CocoKeypoints(ann, COCO_MINI / "images", detections=tmp_path / "det.json")
    with pytest.warns(UserWarning, match="skipped 2 unusable"):
        ds = CocoKeypoints(ann, COCO_MINI / "images", detections=tmp_path / "det.json", on_bad="skip")
    assert len(ds) == 1

    coco = json.loads(ann.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    coco["annotations"][0]["keypoints"] = coco["annotations"][0]["keypoints"][:-3]
    (tmp_path / "ragged.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=f"annotation {coco['annotations'][0]['id']}: 48 keypoint values, expected 51"):
        CocoKeypoints(tmp_path / "ragged.json", COCO_MINI / "images")


def test_annotation_file_without_people_is_a_clear_error(tmp_path):
    coco = json.loads((COCO_MINI / "annotations" / "person_keypoints_mini.json").read_text())
    coco["annotations"] = []
    (tmp_path / "empty.json").write_text(json.dumps(coco))
    ds = CocoKeypoints(tmp_path / "empty.json", COCO_MINI / "images")
    assert len(ds) == 0 and len(ds.image_ids) == 70
