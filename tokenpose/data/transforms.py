"""Pure geometric and photometric transforms of the top-down pipeline.

Conventions (reference §6.1-6.3):

* Points are (x, y) in pixels, x to the right, y down, 0-based.
* A person crop is described by a center (x, y) in image pixels, a scale (s_x, s_y) in units of
  200 pixels (``PIXEL_STD``) and a rotation in degrees (counter-clockwise in the image as seen).
* Affine matrices follow the unbiased "size-1" convention: the center maps to
  ((W_o - 1) / 2, (H_o - 1) / 2) and 200 * s_x - 1 image pixels map onto W_o - 1 output pixels.
  Only s_x sets the zoom; s_y is carried along but unused by the matrix.
* Image sizes passed as ``*_hw`` are (H, W). ``get_affine_transform`` keeps the output size as
  (W, H) (``output_size_wh``), the order of OpenCV's ``dsize`` and of the official function.

Everything here is numpy (float64 for geometry); ``flip_back_heatmaps`` also accepts torch tensors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from tokenpose.keypoints import MEAN_RGB, PIXEL_STD, STD_RGB

FlipPairs = Sequence[Sequence[int]]


class ImageReadError(OSError):
    """An image file exists but is empty or cannot be decoded."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as BGR uint8 (H, W, 3), ignoring EXIF orientation like the official loader.

    Raises FileNotFoundError when `path` does not exist and ImageReadError when it is empty or
    cannot be decoded; both name the file.
    """
    path = os.fspath(path)
    problem = image_file_problem(path, decode=False)
    if problem is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(problem)
        raise ImageReadError(problem)
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.size == 0:
        raise ImageReadError(f"cannot decode image file {path!r}")
    return image


def image_file_problem(path: str | os.PathLike, decode: bool = False) -> str | None:
    """A one-line description of what is wrong with an image file, or None when it looks fine.

    Cheap by default: checks existence, non-zero size and that OpenCV recognises the format from
    the file signature. `decode=True` also decodes the whole image (slow on large datasets).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        return f"image file not found: {path!r}"
    if os.path.getsize(path) == 0:
        return f"image file is empty: {path!r}"
    if not cv2.haveImageReader(path):
        return f"image file is not in a format OpenCV can read: {path!r}"
    if decode and cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) is None:
        return f"cannot decode image file {path!r}"
    return None


def box_to_center_scale(
    box_xywh: np.ndarray | Sequence[float],
    aspect_ratio: float,
    scale_factor: float = 1.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Person box(es) to crop center and scale (reference §6.1).

    box_xywh: (4,) or (N, 4) boxes (x, y, w, h) in image pixels.
    aspect_ratio: model input width / height (0.75 for 256x192).
    Returns center (N, 2) or (2,) in pixels and scale (N, 2) or (2,) in units of 200 px:
    center = (x + (w - 1) / 2, y + (h - 1) / 2); w or h is enlarged to the aspect ratio, then
    divided by 200 and multiplied by `scale_factor`.
    """
    boxes = np.asarray(box_xywh, dtype=np.float64)
    single = boxes.ndim == 1
    boxes = boxes.reshape(-1, 4)
    x, y, w, h = boxes.T
    center = np.stack([x + (w - 1) * 0.5, y + (h - 1) * 0.5], axis=-1)
    wide = w > aspect_ratio * h
    w_fit = np.where(wide, w, h * aspect_ratio)
    h_fit = np.where(wide, w / aspect_ratio, h)
    scale = np.stack([w_fit, h_fit], axis=-1) / PIXEL_STD * scale_factor
    return (center[0], scale[0]) if single else (center, scale)


def clip_box_to_image(
    box_xywh: np.ndarray | Sequence[float], width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Clip ground-truth box(es) to the image the way the official COCO loader does.

    box_xywh: (4,) or (N, 4) boxes (x, y, w, h) in pixels; width/height: image size in pixels.
    Returns (clipped (N, 4) or (4,) xywh, valid (N,) or () bool). The official rule is
    x1 = max(0, x), x2 = min(W - 1, x1 + max(0, w - 1)) (x2 is measured from the *clipped* x1),
    clipped box = (x1, y1, x2 - x1 + 1, y2 - y1 + 1). `valid` is False when that box is empty or
    when the raw box does not overlap the image [0, W) x [0, H) at all.
    """
    boxes = np.asarray(box_xywh, dtype=np.float64)
    single = boxes.ndim == 1
    boxes = boxes.reshape(-1, 4)
    x, y, w, h = boxes.T
    x1 = np.maximum(0.0, x)
    y1 = np.maximum(0.0, y)
    x2 = np.minimum(width - 1.0, x1 + np.maximum(0.0, w - 1))
    y2 = np.minimum(height - 1.0, y1 + np.maximum(0.0, h - 1))
    overlaps = (x < width) & (y < height) & (x + np.maximum(w, 1.0) > 0) & (y + np.maximum(h, 1.0) > 0)
    valid = (x2 >= x1) & (y2 >= y1) & overlaps
    clipped = np.stack([x1, y1, x2 - x1 + 1, y2 - y1 + 1], axis=-1)
    return (clipped[0], valid[0]) if single else (clipped, valid)


def get_affine_transforms(
    centers: np.ndarray,
    scales: np.ndarray,
    rots_deg: np.ndarray | float,
    output_size_wh: Sequence[float],
    inv: bool = False,
) -> np.ndarray:
    """Batched crop matrices, image -> output (or output -> image when `inv`), shape (N, 2, 3).

    centers: (N, 2) pixels; scales: (N, 2) or (N,) in units of 200 px (only s_x is used);
    rots_deg: (N,) or scalar, degrees; output_size_wh: (W_o, H_o) of the crop or heatmap.
    The forward matrix is [k R(-r) | t] with k = (W_o - 1) / (200 s_x - 1) and t chosen so that the
    center lands on ((W_o - 1) / 2, (H_o - 1) / 2) (reference §6.2).
    """
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    n = centers.shape[0]
    scales = np.asarray(scales, dtype=np.float64)
    s_x = scales[..., 0] if scales.ndim == 2 else scales
    s_x = np.broadcast_to(s_x, (n,))
    theta = np.deg2rad(np.broadcast_to(np.asarray(rots_deg, dtype=np.float64), (n,)))
    out_w, out_h = float(output_size_wh[0]), float(output_size_wh[1])
    dst_center = np.array([(out_w - 1) * 0.5, (out_h - 1) * 0.5])
    k = (out_w - 1) / (s_x * PIXEL_STD - 1)
    cos, sin = np.cos(theta), np.sin(theta)
    if inv:
        # (1/k) R(r): output offsets from the output center back to image offsets from `center`.
        linear = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2) / k[:, None, None]
        shift = centers - linear @ dst_center
    else:
        linear = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2) * k[:, None, None]
        shift = dst_center - (linear @ centers[:, :, None])[..., 0]
    return np.concatenate([linear, shift[:, :, None]], axis=-1)


def get_affine_transform(
    center: np.ndarray | Sequence[float],
    scale: np.ndarray | Sequence[float] | float,
    rot_deg: float,
    output_size_wh: Sequence[float],
    inv: bool = False,
) -> np.ndarray:
    """One crop matrix (2, 3): image -> output, or output -> image when `inv`.

    center: (2,) pixels; scale: (2,) or scalar, units of 200 px (only s_x is used); rot_deg:
    degrees; output_size_wh: (W_o, H_o). Equals the official function to float32 rounding.
    """
    s = np.asarray(scale, dtype=np.float64).reshape(-1)[:1]
    return get_affine_transforms(np.reshape(center, (1, 2)), s, rot_deg, output_size_wh, inv)[0]


def affine_points(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Apply affine matrix/matrices to points.

    points: (..., P, 2+) pixels (extra columns are ignored); mat: (2, 3) or (..., 2, 3) matching
    the leading dims of `points`. Returns (..., P, 2) float64.
    """
    pts = np.asarray(points, dtype=np.float64)[..., :2]
    mat = np.asarray(mat, dtype=np.float64)
    return pts @ np.swapaxes(mat[..., :2], -1, -2) + mat[..., None, :, 2]


def crop_person(
    image: np.ndarray,
    center: np.ndarray | Sequence[float],
    scale: np.ndarray | Sequence[float],
    rot_deg: float,
    output_size_hw: Sequence[int],
) -> np.ndarray:
    """Warp the person at (center, scale, rot) into an (H, W, C) crop of `output_size_hw`.

    image: (H_img, W_img, C) any dtype OpenCV warps (BGR or RGB alike). Bilinear, zero border.
    """
    out_h, out_w = int(output_size_hw[0]), int(output_size_hw[1])
    mat = get_affine_transform(center, scale, rot_deg, (out_w, out_h))
    return cv2.warpAffine(
        image, mat, (out_w, out_h), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )


def normalize_image(
    image: np.ndarray,
    bgr: bool = True,
    mean_rgb: Sequence[float] = MEAN_RGB,
    std_rgb: Sequence[float] = STD_RGB,
) -> np.ndarray:
    """uint8 image(s) (H, W, 3) or (N, H, W, 3) -> float32 (3, H, W) or (N, 3, H, W), RGB order.

    Divides by 255 and normalises with `mean_rgb` / `std_rgb` (RGB order; default the ImageNet
    statistics: ToTensor + Normalize of the official pipeline). `bgr=True` (OpenCV order) swaps
    the channels to RGB.
    """
    img = np.asarray(image)
    if img.shape[-1] != 3:
        raise ValueError(f"expected a 3-channel image (..., H, W, 3), got shape {img.shape}")
    mean, std = np.asarray(mean_rgb, dtype=np.float32), np.asarray(std_rgb, dtype=np.float32)
    x = img.astype(np.float32) / np.float32(255.0)
    if bgr:
        x = (x - mean[::-1]) / std[::-1]
        x = x[..., ::-1]
    else:
        x = (x - mean) / std
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess_crops(
    image_bgr: np.ndarray,
    centers: np.ndarray,
    scales: np.ndarray,
    input_hw: Sequence[int],
    rots_deg: np.ndarray | float = 0.0,
    mean_rgb: Sequence[float] = MEAN_RGB,
    std_rgb: Sequence[float] = STD_RGB,
) -> np.ndarray:
    """Crop every person of one image and normalise them into one batch.

    image_bgr: (H_img, W_img, 3) uint8 as read by `read_image`; centers (N, 2) pixels;
    scales (N, 2) units of 200 px; input_hw (H, W) of the model input; rots_deg scalar or (N,);
    mean_rgb / std_rgb: the model's normalisation (RGB order, default ImageNet).
    Returns (N, 3, H, W) float32, RGB, normalised: the model input.
    """
    h, w = int(input_hw[0]), int(input_hw[1])
    mats = get_affine_transforms(centers, scales, rots_deg, (w, h))
    crops = np.empty((len(mats), h, w, 3), dtype=np.uint8)
    for i, mat in enumerate(mats):  # one warp per person: OpenCV has no batched warp
        crops[i] = cv2.warpAffine(image_bgr, mat, (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return normalize_image(crops, bgr=True, mean_rgb=mean_rgb, std_rgb=std_rgb)


def flip_image(image: np.ndarray) -> np.ndarray:
    """Mirror an (H, W, C) image left-right (contiguous copy)."""
    return np.ascontiguousarray(image[:, ::-1])


def flip_permutation(num_joints: int, flip_pairs: FlipPairs) -> np.ndarray:
    """Index array that swaps each left/right pair: `x[..., perm]` relabels joints after a flip."""
    perm = np.arange(num_joints)
    for a, b in flip_pairs:  # a handful of fixed pairs
        perm[a], perm[b] = b, a
    return perm


def flip_joints(
    joints: np.ndarray, vis: np.ndarray, width: int, flip_pairs: FlipPairs
) -> tuple[np.ndarray, np.ndarray]:
    """Joints of an image mirrored left-right (reference §6.2: x -> width - 1 - x, pairs swapped).

    joints: (..., J, 2+) pixels; vis: (..., J) or (..., J, k) visibility; width: image width.
    Returns new (joints, vis); joints with vis == 0 are set to 0 like the official code does, so
    unlabelled joints stay at (0, 0).
    """
    joints = np.array(joints, dtype=np.float64)
    vis = np.asarray(vis)
    perm = flip_permutation(joints.shape[-2], flip_pairs)
    joints[..., 0] = width - 1 - joints[..., 0]
    joints = joints[..., perm, :]
    vis = vis[..., perm, :] if vis.ndim == joints.ndim else vis[..., perm]
    labelled = (vis[..., 0] if vis.ndim == joints.ndim else vis) > 0
    return joints * labelled[..., None], vis.copy()


def flip_back_heatmaps(heatmaps, flip_pairs: FlipPairs):
    """Heatmaps predicted on a mirrored input, brought back to the original frame.

    heatmaps: (B, J, h, w) numpy array or torch tensor. Reverses the width axis and swaps the
    channels of each flip pair; returns the same type (a new array / tensor). No pixel shift.
    """
    perm = flip_permutation(heatmaps.shape[1], flip_pairs)
    if isinstance(heatmaps, np.ndarray):
        return np.ascontiguousarray(heatmaps[:, perm, :, ::-1])
    import torch

    index = torch.as_tensor(perm, device=heatmaps.device)
    return torch.flip(heatmaps, dims=(-1,)).index_select(1, index)


def flip_test_average(heatmaps, heatmaps_of_flipped, flip_pairs: FlipPairs):
    """The official flip test: (heatmaps + flip_back(heatmaps_of_flipped)) * 0.5, no shift.

    Both (B, J, h, w), numpy or torch (same type returned).
    """
    return (heatmaps + flip_back_heatmaps(heatmaps_of_flipped, flip_pairs)) * 0.5


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation of reference §6.3, applied as half body, scale, rotation, flip."""

    scale_factor: float  # s *= clip(1 + randn * SF, 1 - SF, 1 + SF)
    rotation_factor: float  # r = clip(randn * RF, -2 RF, 2 RF) degrees, with rotation_prob
    half_body_prob: float  # <= 0 disables it
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_min_joints: int = 8  # half body only when more joints than this are visible
    half_body_scale: float = 1.5


COCO_AUGMENTATION = Augmentation(scale_factor=0.35, rotation_factor=45.0, half_body_prob=0.3)
MPII_AUGMENTATION = Augmentation(scale_factor=0.25, rotation_factor=30.0, half_body_prob=0.0)


def half_body_center_scale(
    joints: np.ndarray,
    vis: np.ndarray,
    upper_body_ids: Sequence[int],
    aspect_ratio: float,
    prefer_upper: bool,
    scale_factor: float = 1.5,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Crop of the upper or lower body only (half-body augmentation, reference §6.3).

    joints: (J, 2+) pixels; vis: (J,) visibility; prefer_upper: the random draw (upper body when
    it has more than 2 visible joints). Otherwise the lower body if it has more than 2, else the
    upper body. Returns (center (2,), scale (2,)) or None when fewer than 2 joints are selected.
    """
    visible = np.asarray(vis) > 0
    upper = np.zeros(len(visible), dtype=bool)
    upper[list(upper_body_ids)] = True
    up, low = visible & upper, visible & ~upper
    if prefer_upper and up.sum() > 2:
        chosen = up
    else:
        chosen = low if low.sum() > 2 else up
    if chosen.sum() < 2:
        return None
    pts = np.asarray(joints, dtype=np.float64)[chosen, :2]
    center = pts.mean(axis=0)
    w, h = pts.max(axis=0) - pts.min(axis=0) + 1
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h]) / PIXEL_STD * scale_factor


@dataclass(frozen=True)
class AugmentedCrop:
    """Outcome of `sample_augmentation`: the crop to take and whether to mirror the image first."""

    center: np.ndarray  # (2,) pixels, in the frame of the (possibly mirrored) image
    scale: np.ndarray  # (2,) units of 200 px
    rotation: float  # degrees
    flip: bool


def sample_augmentation(
    rng: np.random.Generator,
    aug: Augmentation,
    center: np.ndarray,
    scale: np.ndarray,
    joints: np.ndarray,
    vis: np.ndarray,
    upper_body_ids: Sequence[int],
    aspect_ratio: float,
    image_width: int,
) -> AugmentedCrop:
    """Draw one training augmentation (half body, scale, rotation, flip, in that order).

    center/scale: the annotation's crop; joints (J, 2+) and vis (J,) image pixels / visibility;
    image_width: pixels, to mirror the center when flipping. Joints are not modified: mirror
    them with `flip_joints` when `flip` is set.
    """
    center = np.asarray(center, dtype=np.float64).copy()
    scale = np.asarray(scale, dtype=np.float64).copy()
    if (
        aug.half_body_prob > 0
        and (np.asarray(vis) > 0).sum() > aug.half_body_min_joints
        and rng.random() < aug.half_body_prob
    ):
        half = half_body_center_scale(joints, vis, upper_body_ids, aspect_ratio,
                                      prefer_upper=rng.standard_normal() < 0.5,
                                      scale_factor=aug.half_body_scale)
        if half is not None:
            center, scale = half
    sf = aug.scale_factor
    scale = scale * np.clip(1 + rng.standard_normal() * sf, 1 - sf, 1 + sf)
    rotation = 0.0
    if rng.random() <= aug.rotation_prob:
        rf = aug.rotation_factor
        rotation = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
    flip = bool(rng.random() <= aug.flip_prob)
    if flip:
        center[0] = image_width - 1 - center[0]
    return AugmentedCrop(center=center, scale=scale, rotation=rotation, flip=flip)
