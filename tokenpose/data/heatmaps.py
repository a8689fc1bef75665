"""HeatmapCodec: Gaussian training targets (encode) and argmax + DARK keypoint decoding (decode).

One object serves the dataset (targets), the evaluator and every inference engine (decoding), so
the conventions live in one place (reference §6.4 and §6.6):

* heatmap pixel (i, j) sits at (x, y) = (j, i); crops and heatmaps share the unbiased "size-1"
  affine convention, so no half-pixel or one-pixel shift is applied anywhere;
* targets are full-grid Gaussians with sub-pixel centres; decoding is integer argmax refined by
  DARK (blur, log, one Newton step) and mapped back to the image by the inverse heatmap affine.

Everything is vectorised over batch and joints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from tokenpose.data.transforms import (
    affine_points,
    flip_test_average,
    get_affine_transforms,
)

__all__ = ["HeatmapCodec", "flip_test_average", "gaussian_blur_maps", "rescore"]


def _to_numpy(x) -> np.ndarray:
    """numpy view of a numpy array or a torch tensor (any device, no grad)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        # numpy has no bfloat16; half and bfloat16 maps are decoded in float32.
        return (x.float() if x.dtype.is_floating_point and x.element_size() < 4 else x).numpy()
    return np.asarray(x)


def gaussian_blur_maps(heatmaps: np.ndarray, kernel_size: int = 11) -> np.ndarray:
    """Blur every map of (..., h, w) with OpenCV's Gaussian kernel over a zero border, float64.

    Equals the official per-map `cv2.GaussianBlur(zero-padded map, (k, k), 0)` cropped back:
    with (k - 1) / 2 zeros of padding the kernel never reaches OpenCV's own border, so this is a
    separable convolution with zero padding (sigma = 0.3 ((k - 1) / 2 - 1) + 0.8).
    """
    kernel = cv2.getGaussianKernel(kernel_size, 0, ktype=cv2.CV_64F).ravel()
    r = (kernel_size - 1) // 2
    maps = np.asarray(heatmaps, dtype=np.float64)
    h, w = maps.shape[-2:]
    pad = [(0, 0)] * (maps.ndim - 2) + [(r, r), (r, r)]
    padded = np.pad(maps, pad)
    rows = sum(kv * padded[..., :, i:i + w] for i, kv in enumerate(kernel))  # fixed taps
    return sum(kv * rows[..., i:i + h, :] for i, kv in enumerate(kernel))


# Longest DARK step kept, heatmap pixels (see HeatmapCodec._dark_offsets).
MAX_DARK_STEP = 1.0


@dataclass(frozen=True)
class HeatmapCodec:
    """Encode joints to Gaussian heatmaps and decode heatmaps to keypoints.

    input_hw: model input (H, W) pixels; heatmap_hw: (h, w) pixels; sigma: Gaussian sigma in
    heatmap pixels; dark: DARK refinement in `decode` (the official POST_PROCESS: true);
    blur_kernel: DARK's Gaussian kernel size.
    """

    input_hw: tuple[int, int]
    heatmap_hw: tuple[int, int]
    sigma: float = 2.0
    dark: bool = True
    blur_kernel: int = 11

    @classmethod
    def from_config(cls, cfg, **overrides) -> HeatmapCodec:
        """Codec of a `ModelConfig` (input size, heatmap size, sigma)."""
        kwargs = dict(input_hw=tuple(cfg.input_hw), heatmap_hw=tuple(cfg.heatmap_hw), sigma=cfg.sigma)
        kwargs.update(overrides)
        return cls(**kwargs)

    def encode(self, joints_hm, vis) -> tuple[np.ndarray, np.ndarray]:
        """Training targets for joints given in heatmap pixels.

        joints_hm: (..., J, 2 or 3) heatmap-pixel (x, y) (a third column is ignored);
        vis: (..., J) or (..., J, k) visibility (labelled when > 0).
        Returns target (..., J, h, w) float32, a full-grid Gaussian exp(-d^2 / (2 sigma^2)) around
        the sub-pixel joint, and target_weight (..., J, 1) float32: 1 for a labelled joint whose
        [int(mu - 3 sigma), int(mu + 3 sigma + 1)] window overlaps the heatmap, else 0 (and then
        its map is all zeros).
        """
        mu = np.asarray(_to_numpy(joints_hm), dtype=np.float64)[..., :2]
        v = np.asarray(_to_numpy(vis))
        if v.ndim == mu.ndim:
            v = v[..., 0]
        h, w = self.heatmap_hw
        radius = 3 * self.sigma
        ul = np.trunc(mu - radius)  # int() of the official code truncates towards zero
        br = np.trunc(mu + radius + 1)
        outside = (ul[..., 0] >= w) | (ul[..., 1] >= h) | (br[..., 0] < 0) | (br[..., 1] < 0)
        weight = (v > 0) & ~outside
        two_s2 = 2.0 * self.sigma**2
        gx = np.exp(-((np.arange(w) - mu[..., 0:1]) ** 2) / two_s2)  # (..., J, w)
        gy = np.exp(-((np.arange(h) - mu[..., 1:2]) ** 2) / two_s2)  # (..., J, h)
        target = gy[..., :, None] * gx[..., None, :] * weight[..., None, None]
        return target.astype(np.float32), weight[..., None].astype(np.float32)

    def input_to_heatmap(self, points_input) -> np.ndarray:
        """Map (..., 2+) crop-input pixels to heatmap pixels (the two crops share center/rotation).

        Both crops put the person center at ((W - 1) / 2, (H - 1) / 2) and zoom by (W - 1), so the
        map is x_h = x_i * r, y_h = (y_i - (H_i - 1) / 2) * r + (h - 1) / 2 with r = (w - 1) / (W_i - 1).
        """
        pts = np.asarray(points_input, dtype=np.float64)[..., :2]
        (in_h, in_w), (hm_h, hm_w) = self.input_hw, self.heatmap_hw
        r = (hm_w - 1) / (in_w - 1)
        x = pts[..., 0] * r
        y = (pts[..., 1] - (in_h - 1) / 2) * r + (hm_h - 1) / 2
        return np.stack([x, y], axis=-1)

    def encode_input_coords(self, joints_input, vis) -> tuple[np.ndarray, np.ndarray]:
        """`encode` for joints given in crop-input pixels: (..., J, 2+) -> target, target_weight."""
        return self.encode(self.input_to_heatmap(joints_input), vis)

    def decode(
        self,
        heatmaps,
        centers=None,
        scales=None,
        *,
        dark: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints from heatmaps.

        heatmaps: (N, J, h, w) numpy array or torch tensor (any float dtype / device).
        centers (N, 2) pixels and scales (N, 2) units of 200 px: the crops the heatmaps came
        from; when given, keypoints are mapped back to image pixels with the inverse affine for
        the heatmap size, otherwise they stay in heatmap pixels.
        dark: override the codec's DARK setting.
        Returns keypoints (N, J, 2) float64 (x, y) and maxvals (N, J, 1) float32 (the raw map
        maxima, used as confidences). Always numpy. Maps whose max is <= 0 decode to (0, 0)
        (before the mapping back), like the official code.
        """
        hm = _to_numpy(heatmaps)
        if hm.ndim != 4:
            raise ValueError(f"heatmaps must be (N, J, h, w), got shape {hm.shape}")
        n, j, h, w = hm.shape
        flat = hm.reshape(n, j, h * w)
        idx = flat.argmax(axis=-1)
        maxvals = np.take_along_axis(flat, idx[..., None], axis=-1).astype(np.float32)
        positive = maxvals[..., 0] > 0
        px = np.where(positive, idx % w, 0)
        py = np.where(positive, idx // w, 0)
        coords = np.stack([px, py], axis=-1).astype(np.float64)
        if self.dark if dark is None else dark:
            coords = coords + self._dark_offsets(hm, px, py, maxvals[..., 0])
        if centers is not None:
            if scales is None:
                raise ValueError("decode needs scales together with centers")
            mats = get_affine_transforms(_to_numpy(centers), _to_numpy(scales), 0.0, (w, h), inv=True)
            if len(mats) != n:
                raise ValueError(f"got {len(mats)} centers/scales for {n} heatmaps")
            coords = affine_points(coords, mats)
        return coords, maxvals

    def _dark_offsets(self, hm: np.ndarray, px: np.ndarray, py: np.ndarray, maxvals: np.ndarray) -> np.ndarray:
        """DARK sub-pixel offsets (N, J, 2) at the integer argmax (px, py), reference §6.6.

        One deviation from the official code: a step longer than 1 px on either axis is dropped
        (the integer argmax is kept). The argmax is the peak's pixel, so the true peak lies within
        a pixel of it; a longer Taylor step means the quadratic model does not hold (a flat or
        multi-peaked map, e.g. an occluded joint or untrained weights), and the official code then
        moves the keypoint by up to thousands of pixels. On peaked maps nothing changes (the
        official goldens' largest step is 0.64 px).
        """
        n, j, h, w = hm.shape
        blurred = gaussian_blur_maps(hm, self.blur_kernel)
        blurred_max = blurred.reshape(n, j, -1).max(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(blurred_max != 0, maxvals.astype(np.float64) / blurred_max, 0.0)
        logm = np.log(np.maximum(blurred * ratio[..., None, None], 1e-10))

        interior = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
        bi = np.arange(n)[:, None]
        ji = np.arange(j)[None, :]

        def at(dx: int, dy: int) -> np.ndarray:
            return logm[bi, ji, np.clip(py + dy, 0, h - 1), np.clip(px + dx, 0, w - 1)]

        centre = at(0, 0)
        gx = 0.5 * (at(1, 0) - at(-1, 0))
        gy = 0.5 * (at(0, 1) - at(0, -1))
        dxx = 0.25 * (at(2, 0) - 2 * centre + at(-2, 0))
        dyy = 0.25 * (at(0, 2) - 2 * centre + at(0, -2))
        dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
        det = dxx * dyy - dxy**2
        with np.errstate(divide="ignore", invalid="ignore"):
            off_x = -(dyy * gx - dxy * gy) / det  # -H^-1 g, H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det
            off_y = -(dxx * gy - dxy * gx) / det
        offsets = np.stack([off_x, off_y], axis=-1)
        ok = (
            interior & (det != 0) & np.isfinite(offsets).all(axis=-1)
            & (np.abs(offsets) <= MAX_DARK_STEP).all(axis=-1)
        )
        return np.where(ok[..., None], offsets, 0.0)

    def flip_test(self, heatmaps, heatmaps_of_flipped, flip_pairs: Sequence[Sequence[int]]):
        """Official flip-test average of (B, J, h, w) heatmaps and those of the mirrored input."""
        return flip_test_average(heatmaps, heatmaps_of_flipped, flip_pairs)


def rescore(maxvals: np.ndarray, box_scores: np.ndarray, in_vis_thre: float = 0.2) -> np.ndarray:
    """Official person rescoring.

    Args:
        maxvals: (N, J) or (N, J, 1) heatmap maxima per joint (unitless confidences).
        box_scores: (N,) person-box scores (1 for ground-truth boxes).
        in_vis_thre: joints with maxval > this count towards the keypoint score.

    Returns:
        (N,) float64 scores: mean of the maxvals above `in_vis_thre` (0 if there are none)
        times the box score.
    """
    m = np.asarray(maxvals, dtype=np.float64)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"maxvals must have shape (N, J) or (N, J, 1), got {np.shape(maxvals)}")
    b = np.asarray(box_scores, dtype=np.float64)
    if b.shape != (m.shape[0],):
        raise ValueError(f"box_scores must have shape ({m.shape[0]},), got {b.shape}")
    valid = m > in_vis_thre
    count = valid.sum(axis=1)
    total = np.where(valid, m, 0.0).sum(axis=1)
    kpt_score = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return kpt_score * b
