"""Geometry, cropping, normalisation and flipping of the top-down pipeline (tokenpose.data.transforms)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tokenpose.keypoints import COCO_FLIP_PAIRS, MEAN_RGB, STD_RGB
from tokenpose.data.transforms import (
    COCO_AUGMENTATION,
    ImageReadError,
    affine_points,
    box_to_center_scale,
    clip_box_to_image,
    crop_person,
    flip_back_heatmaps,
    flip_image,
    flip_joints,
    flip_test_average,
    get_affine_transform,
    get_affine_transforms,
    half_body_center_scale,
    normalize_image,
    preprocess_crops,
    read_image,
    sample_augmentation,
)

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = np.load(FIXTURES / "reference" / "golden_postprocess.npz")
COCO_IMAGE = FIXTURES / "coco_mini" / "images" / "000000000785.jpg"


def test_affine_matches_official_goldens():
    for (cx, cy, sx, sy, rot, w, h, inv), expected in zip(GOLDEN["affine_cases"], GOLDEN["affine_mats"]):
        mat = get_affine_transform((cx, cy), (sx, sy), rot, (w, h), inv=bool(inv))
        # The official matrix is solved from float32 points: agreement is to float32 rounding.
        np.testing.assert_allclose(mat, expected, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(mat[:, :2], expected[:, :2], rtol=0, atol=1e-6)


def test_batched_affine_equals_single_and_inverse_is_inverse():
    cases = GOLDEN["affine_cases"]
    size = (48, 64)
    mats = get_affine_transforms(cases[:, :2], cases[:, 2:4], cases[:, 4], size)
    invs = get_affine_transforms(cases[:, :2], cases[:, 2:4], cases[:, 4], size, inv=True)
    assert mats.shape == invs.shape == (len(cases), 2, 3)
    for row, mat, inv in zip(cases, mats, invs):
        np.testing.assert_allclose(mat, get_affine_transform(row[:2], row[2:4], row[4], size), atol=1e-12)
        pts = np.array([[0.0, 0.0], [17.3, 40.1], [47.0, 63.0]])
        np.testing.assert_allclose(affine_points(affine_points(pts, inv), mat), pts, atol=1e-9)


def test_affine_size_minus_one_convention():
    center, scale = np.array([300.0, 200.0]), np.array([1.0, 4 / 3])
    mat = get_affine_transform(center, scale, 0.0, (192, 256))
    half = (200 * scale[0] - 1) / 2  # the crop spans 200 s_x - 1 pixels edge to edge
    out = affine_points(np.array([center, center - [half, 0], center + [half, 0]]), mat)
    np.testing.assert_allclose(out, [[95.5, 127.5], [0.0, 127.5], [191.0, 127.5]], atol=1e-9)
    # Rotation by +90 degrees turns the person counter-clockwise in the crop: a point to the
    # right of the center lands above it.
    rot = get_affine_transform(center, scale, 90.0, (192, 256))
    right = affine_points(np.array([center + [50, 0]]), rot)[0]
    assert right[0] == pytest.approx(95.5) and right[1] < 127.5 - 10


def test_box_to_center_scale_values_and_vectorised():
    center, scale = box_to_center_scale([10, 20, 100, 50], aspect_ratio=0.75)
    np.testing.assert_allclose(center, [59.5, 44.5])
    np.testing.assert_allclose(scale, np.array([100, 100 / 0.75]) / 200 * 1.25)
    center, scale = box_to_center_scale([0, 0, 30, 200], aspect_ratio=0.75, scale_factor=1.0)
    np.testing.assert_allclose(scale, [150 / 200, 1.0])
    boxes = np.random.default_rng(0).uniform(1, 300, (7, 4))
    centers, scales = box_to_center_scale(boxes, 0.75)
    assert centers.shape == scales.shape == (7, 2)
    for box, c, s in zip(boxes, centers, scales):
        c1, s1 = box_to_center_scale(box, 0.75)
        np.testing.assert_allclose(c, c1)
        np.testing.assert_allclose(s, s1)
        assert s[0] / s[1] == pytest.approx(0.75)


def test_clip_box_to_image():
    boxes = np.array([
        [10, 10, 50, 60],      # inside
        [600, 400, 100, 100],  # partly outside, clipped to the image
        [700, 10, 20, 20],     # right of the image
        [10, -80, 20, 30],     # above the image
    ], dtype=float)
    clipped, valid = clip_box_to_image(boxes, 640, 480)
    np.testing.assert_array_equal(valid, [True, True, False, False])
    np.testing.assert_allclose(clipped[0], [10, 10, 50, 60])
    np.testing.assert_allclose(clipped[1], [600, 400, 40, 80])


def test_crop_person_puts_image_points_where_the_affine_says():
    # A smooth blob keeps its centroid through bilinear resampling, so its centroid in the crop
    # must land where the affine matrix sends its centre.
    yy, xx = np.mgrid[0:300, 0:400]
    point = np.array([230.3, 140.6])
    blob = np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * 6.0**2)).astype(np.float32)
    image = np.repeat(blob[..., None], 3, axis=2)
    center, scale, rot = np.array([210.0, 150.0]), np.array([0.6, 0.8]), 25.0
    crop = crop_person(image, center, scale, rot, (256, 192))
    assert crop.shape == (256, 192, 3)
    expected = affine_points(point[None], get_affine_transform(center, scale, rot, (192, 256)))[0]
    ys, xs = np.mgrid[0:256, 0:192]
    weights = crop[..., 1].astype(np.float64)
    found = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    np.testing.assert_allclose(found, expected, atol=0.05)
    # Outside the image the border is zero.
    far = crop_person(image, [1000.0, 1000.0], scale, 0.0, (64, 48))
    assert not far.any()


def test_normalize_image_matches_totensor_normalize():
    image = np.random.default_rng(1).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    out = normalize_image(image)  # BGR input
    rgb = torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1).float() / 255
    expected = (rgb - torch.tensor(MEAN_RGB)[:, None, None]) / torch.tensor(STD_RGB)[:, None, None]
    assert out.dtype == np.float32 and out.shape == (3, 5, 4)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(normalize_image(image[..., ::-1], bgr=False), out, atol=1e-7)
    np.testing.assert_allclose(normalize_image(np.stack([image, image]))[1], out)
    with pytest.raises(ValueError, match="3-channel"):
        normalize_image(np.zeros((4, 4, 1), np.uint8))


def test_preprocess_crops_equals_single_crops():
    image = read_image(COCO_IMAGE)
    centers, scales = box_to_center_scale(np.array([[280.8, 44.7, 218.7, 346.7], [10, 10, 120, 90]]), 0.75)
    batch = preprocess_crops(image, centers, scales, (256, 192))
    assert batch.shape == (2, 3, 256, 192) and batch.dtype == np.float32
    for crop, c, s in zip(batch, centers, scales):
        np.testing.assert_array_equal(crop, normalize_image(crop_person(image, c, s, 0.0, (256, 192))))


def test_flip_joints_swaps_pairs_and_mirrors():
    rng = np.random.default_rng(2)
    joints = rng.uniform(0, 100, (17, 2))
    vis = np.ones(17)
    vis[3] = 0
    flipped, fvis = flip_joints(joints, vis, 120, COCO_FLIP_PAIRS)
    assert fvis[4] == 0 and fvis[3] == 1  # visibility travels with the swap
    np.testing.assert_allclose(flipped[1], [119 - joints[2, 0], joints[2, 1]])
    np.testing.assert_allclose(flipped[0], [119 - joints[0, 0], joints[0, 1]])
    np.testing.assert_array_equal(flipped[4], [0, 0])  # unlabelled joints are zeroed
    back, bvis = flip_joints(flipped, fvis, 120, COCO_FLIP_PAIRS)
    np.testing.assert_allclose(back[vis > 0], joints[vis > 0])
    np.testing.assert_array_equal(bvis, vis)


def test_mirrored_crop_equals_crop_of_mirrored_image():
    image = read_image(COCO_IMAGE)
    width = image.shape[1]
    center, scale, rot = np.array([390.0, 218.0]), np.array([1.4, 1.87]), 20.0
    crop = crop_person(image, center, scale, rot, (256, 192)).astype(int)
    mirrored = crop_person(flip_image(image), [width - 1 - center[0], center[1]], scale, -rot, (256, 192))
    diff = np.abs(crop[:, ::-1] - mirrored.astype(int))
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 2  # bilinear rounding only


def test_flip_back_matches_official_flip_test_golden():
    g = np.load(FIXTURES / "reference" / "golden_s_v2_flip.npz")
    pairs = [tuple(p) for p in g["flip_pairs"]]
    assert set(pairs) == set(COCO_FLIP_PAIRS)
    out = flip_test_average(g["heatmaps"], g["heatmaps_flipped_input_raw"], pairs)
    np.testing.assert_allclose(out, g["heatmaps_flip_test"], atol=1e-7)
    as_torch = flip_test_average(torch.from_numpy(g["heatmaps"]),
                                 torch.from_numpy(g["heatmaps_flipped_input_raw"]), pairs)
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), out, atol=1e-7)
    # flip_back is an involution.
    hm = g["heatmaps"]
    np.testing.assert_array_equal(flip_back_heatmaps(flip_back_heatmaps(hm, pairs), pairs), hm)


def test_read_image_errors_name_the_file(tmp_path):
    assert read_image(COCO_IMAGE).shape == (425, 640, 3)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.jpg"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image" * 10)
    with pytest.raises(ImageReadError, match="garbage.jpg"):
        read_image(tmp_path / "garbage.jpg")
    truncated = COCO_IMAGE.read_bytes()[:200]
    (tmp_path / "truncated.jpg").write_bytes(truncated)
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        read_image(tmp_path / "truncated.jpg")


def test_half_body_choice():
    joints = np.stack([np.arange(17) * 10.0, np.arange(17) * 20.0], axis=1)
    vis = np.ones(17)
    c_up, s_up = half_body_center_scale(joints, vis, range(11), 0.75, prefer_upper=True)
    np.testing.assert_allclose(c_up, joints[:11].mean(0))
    h = 200 + 1  # y extent of joints 0..10, plus one
    np.testing.assert_allclose(s_up, np.array([h * 0.75, h]) / 200 * 1.5)
    c_low, _ = half_body_center_scale(joints, vis, range(11), 0.75, prefer_upper=False)
    np.testing.assert_allclose(c_low, joints[11:].mean(0))
    vis_few = np.zeros(17)
    vis_few[0] = 1
    assert half_body_center_scale(joints, vis_few, range(11), 0.75, prefer_upper=True) is None


def test_sample_augmentation_statistics_and_determinism():
    center, scale = np.array([100.0, 120.0]), np.array([1.0, 4 / 3])
    joints, vis = np.random.default_rng(3).uniform(50, 150, (17, 2)), np.ones(17)

    def draw(seed):
        return sample_augmentation(np.random.default_rng(seed), COCO_AUGMENTATION, center, scale,
                                   joints, vis, range(11), 0.75, image_width=640)

    crops = [draw(s) for s in range(1500)]
    a, b = draw(7), draw(7)
    np.testing.assert_array_equal(a.center, b.center)
    assert (a.rotation, a.flip) == (b.rotation, b.flip)
    rotated = np.mean([c.rotation != 0 for c in crops])
    flipped = np.mean([c.flip for c in crops])
    assert 0.53 < rotated < 0.67 and 0.44 < flipped < 0.56
    assert max(abs(c.rotation) for c in crops) <= 90
    plain = [c for c in crops if not c.flip and np.allclose(c.center, center)]
    ratios = np.array([c.scale[0] / scale[0] for c in plain])
    assert ratios.min() >= 0.65 - 1e-9 and ratios.max() <= 1.35 + 1e-9 and ratios.std() > 0.1
    flipped_plain = [c for c in crops if c.flip and np.isclose(c.center[1], center[1])]
    assert all(np.isclose(c.center[0], 639 - center[0]) for c in flipped_plain)
    half_body = np.mean([not np.isclose(c.center[1], center[1]) for c in crops])
    assert 0.22 < half_body < 0.38  # probability 0.3, all 17 joints visible
