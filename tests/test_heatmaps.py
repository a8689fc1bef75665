"""Target generation and decoding (tokenpose.data.heatmaps.HeatmapCodec) against the official goldens."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tokenpose.data.heatmaps import HeatmapCodec, gaussian_blur_maps
from tokenpose.keypoints import COCO_FLIP_PAIRS
from tokenpose.data.transforms import (
    affine_points,
    get_affine_transform,
    get_affine_transforms,
)
from tokenpose.models.config import get_config

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = np.load(FIXTURES / "reference" / "golden_postprocess.npz")
CODEC = HeatmapCodec(input_hw=(256, 192), heatmap_hw=(64, 48), sigma=2.0)


def test_from_config():
    codec = HeatmapCodec.from_config(get_config("l-d24-384"))
    assert codec.input_hw == (384, 288) and codec.heatmap_hw == (96, 72) and codec.sigma == 3.0
    assert HeatmapCodec.from_config(get_config("t")) == CODEC


def test_encode_matches_official_targets():
    target, weight = CODEC.encode(GOLDEN["target_joints"], GOLDEN["target_joints_vis"])
    assert target.shape == (5, 64, 48) and target.dtype == np.float32
    assert weight.shape == (5, 1) and weight.dtype == np.float32
    np.testing.assert_allclose(target, GOLDEN["target"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(weight, GOLDEN["target_weight"])


def test_encode_batched_and_rules():
    joints = np.array([[[10.3, 20.7], [47.9, 0.0]], [[-7.0, 30.0], [24.0, 70.0]]])
    vis = np.array([[1, 0], [2, 1]])
    target, weight = CODEC.encode(joints, vis)
    assert target.shape == (2, 2, 64, 48) and weight.shape == (2, 2, 1)
    # labelled and inside; unlabelled; window [int(-13), int(-0)] = [-13, 0] still touches x=0;
    # y window [64, 77] starts below the map.
    np.testing.assert_array_equal(weight[..., 0], [[1, 0], [1, 0]])
    assert not target[0, 1].any() and not target[1, 1].any()
    # Full-grid, sub-pixel Gaussian: the peak is below 1 and sits at the rounded position.
    assert target[0, 0].max() < 1
    assert np.unravel_index(target[0, 0].argmax(), (64, 48)) == (21, 10)
    assert target[0, 0, 21, 19] > 1e-5  # 8.7 px > 3 sigma away: not truncated to a window
    # window [int(-7-6), int(-7+7)] = [-13, 0]: overlaps column 0 -> weight 1 with a tiny peak
    assert 0 < target[1, 0].max() < 0.01  # exp(-7^2 / 8)
    # int() truncates towards zero: x = -7.5 gives br = int(-0.5) = 0, still "inside" (official);
    # x = -8.5 gives br = int(-1.5) = -1, outside.
    _, w = CODEC.encode(np.array([[-7.5, 30.0], [-8.5, 30.0], [30.0, -7.5], [30.0, -8.5]]), np.ones(4))
    np.testing.assert_array_equal(w[:, 0], [1, 0, 1, 0])


def test_blur_equals_opencv_on_zero_padded_maps():
    maps = np.random.default_rng(0).standard_normal((3, 64, 48))
    padded = np.pad(maps, ((0, 0), (5, 5), (5, 5)))
    expected = np.stack([cv2.GaussianBlur(p, (11, 11), 0)[5:-5, 5:-5] for p in padded])
    np.testing.assert_allclose(gaussian_blur_maps(maps, 11), expected, rtol=0, atol=1e-12)


def test_decode_matches_official_goldens():
    hm, center, scale = GOLDEN["heatmaps"], GOLDEN["center"], GOLDEN["scale"]
    preds, maxvals = CODEC.decode(hm, center, scale)
    assert preds.shape == (4, 17, 2) and maxvals.shape == (4, 17, 1) and maxvals.dtype == np.float32
    np.testing.assert_allclose(preds, GOLDEN["preds_dark"], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(maxvals, GOLDEN["maxvals"])
    plain, _ = CODEC.decode(hm, center, scale, dark=False)
    np.testing.assert_allclose(plain, GOLDEN["preds_argmax"], rtol=0, atol=1e-3)
    coords, _ = CODEC.decode(hm, dark=False)
    np.testing.assert_array_equal(coords, GOLDEN["coords_argmax_heatmap"])
    # DARK moves interior peaks by sub-pixel amounts, never by more than a pixel or so.
    moved = np.abs(preds - plain) / (200 * scale[:, None, :1] / 47)
    assert moved.max() < 1.5 and moved.mean() > 0.05


def test_all_negative_map_decodes_to_origin():
    coords, maxvals = CODEC.decode(GOLDEN["heatmaps"])
    assert maxvals[1, 5, 0] <= 0
    np.testing.assert_array_equal(coords[1, 5], [0.0, 0.0])


def test_decode_torch_equals_numpy():
    hm = GOLDEN["heatmaps"]
    expected, expected_max = CODEC.decode(hm, GOLDEN["center"], GOLDEN["scale"])
    preds, maxvals = CODEC.decode(torch.from_numpy(hm), torch.from_numpy(GOLDEN["center"]),
                                  torch.from_numpy(GOLDEN["scale"]))
    assert isinstance(preds, np.ndarray)
    np.testing.assert_array_equal(preds, expected)
    np.testing.assert_array_equal(maxvals, expected_max)
    grad_hm = torch.from_numpy(hm).requires_grad_()
    np.testing.assert_array_equal(CODEC.decode(grad_hm)[0], CODEC.decode(hm)[0])


def test_encode_decode_round_trip_subpixel():
    rng = np.random.default_rng(5)
    joints = np.stack([rng.uniform(3, 44, (6, 17)), rng.uniform(3, 60, (6, 17))], axis=-1)
    target, weight = CODEC.encode(joints, np.ones((6, 17)))
    assert weight.all()
    decoded, maxvals = CODEC.decode(target)
    np.testing.assert_array_less(np.abs(decoded - joints), 0.05)
    argmax_only, _ = CODEC.decode(target, dark=False)
    assert np.abs(argmax_only - joints).max() > 0.3  # DARK is what makes it sub-pixel
    assert (maxvals > 0.7).all()


def test_round_trip_through_image_coordinates():
    rng = np.random.default_rng(6)
    centers = rng.uniform(100, 500, (3, 2))
    scales = np.repeat(rng.uniform(0.5, 2.0, (3, 1)), 2, axis=1) * [1.0, 4 / 3]
    # image joints inside each person's crop
    hm_joints = np.stack([rng.uniform(4, 43, (3, 17)), rng.uniform(4, 59, (3, 17))], axis=-1)
    to_image = get_affine_transforms(centers, scales, 0.0, (48, 64), inv=True)
    image_joints = affine_points(hm_joints, to_image)
    to_hm = get_affine_transforms(centers, scales, 0.0, (48, 64))
    target, _ = CODEC.encode(affine_points(image_joints, to_hm), np.ones((3, 17)))
    decoded, _ = CODEC.decode(target, centers, scales)
    pixels_per_hm = 200 * scales[:, 0] / 47
    np.testing.assert_array_less(np.abs(decoded - image_joints) / pixels_per_hm[:, None, None], 0.05)


def test_input_to_heatmap_equals_affine_composition():
    center, scale, rot = np.array([321.0, 210.5]), np.array([1.1, 1.4667]), 33.0
    pts_image = np.random.default_rng(7).uniform(200, 400, (10, 2))
    pts_input = affine_points(pts_image, get_affine_transform(center, scale, rot, (192, 256)))
    pts_hm = affine_points(pts_image, get_affine_transform(center, scale, rot, (48, 64)))
    np.testing.assert_allclose(CODEC.input_to_heatmap(pts_input), pts_hm, atol=1e-9)
    t1, w1 = CODEC.encode_input_coords(pts_input[None], np.ones((1, 10)))
    t2, w2 = CODEC.encode(pts_hm[None], np.ones((1, 10)))
    np.testing.assert_allclose(t1, t2, atol=1e-6)
    np.testing.assert_array_equal(w1, w2)


def test_flip_test_of_codec_matches_golden():
    g = np.load(FIXTURES / "reference" / "golden_s_v2_flip.npz")
    out = CODEC.flip_test(g["heatmaps"], g["heatmaps_flipped_input_raw"], COCO_FLIP_PAIRS)
    np.testing.assert_allclose(out, g["heatmaps_flip_test"], atol=1e-7)


def test_decode_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, J, h, w\)"):
        CODEC.decode(np.zeros((17, 64, 48)))
    with pytest.raises(ValueError, match="4 heatmaps"):
        CODEC.decode(GOLDEN["heatmaps"], GOLDEN["center"][:2], GOLDEN["scale"][:2])


def test_dark_step_is_bounded_on_flat_maps():
    # Noise maps have no peak: the Taylor step is meaningless there and must not throw the
    # keypoint away from its argmax pixel (the official code would move it by up to ~1e3 px).
    codec = HeatmapCodec((256, 192), (64, 48))
    noise = np.random.default_rng(0).normal(0, 1, (4, 17, 64, 48)).astype(np.float32)
    refined, _ = codec.decode(noise)
    plain, _ = codec.decode(noise, dark=False)
    step = np.abs(refined - plain)
    assert step.max() <= 1.0
    assert (step > 0).any()  # DARK still refines where the quadratic model holds


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_accepts_half_precision_tensors(dtype):
    codec = HeatmapCodec((256, 192), (64, 48))
    maps = np.random.default_rng(1).normal(0, 0.1, (2, 17, 64, 48)).astype(np.float32)
    maps[:, :, 20, 30] += 3.0
    ours, maxvals = codec.decode(torch.from_numpy(maps).to(dtype))
    assert np.allclose(ours[..., 0], 30, atol=1.0) and np.allclose(ours[..., 1], 20, atol=1.0)
    assert maxvals.dtype == np.float32
