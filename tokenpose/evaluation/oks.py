"""Object keypoint similarity (OKS) and greedy OKS non-maximum suppression, in numpy.

This is the OKS the official TokenPose/HRNet code uses for **NMS** between predicted poses:
every joint counts (no visibility test) and the two poses' areas are averaged,

    e_k = d_k^2 / ((2 sigma_k)^2 * ((a_1 + a_2) / 2 + eps)) / 2,    OKS = mean_k exp(-e_k)

with d_k the Euclidean distance of joint k in pixels, a the pose areas in pixels^2 and
eps = np.spacing(1) (it keeps two zero areas from dividing by zero). pycocotools' OKS for
*scoring* differs (it uses the ground-truth area only and the ground-truth visibility); that one
is computed by pycocotools itself in `tokenpose.evaluation.coco`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tokenpose.keypoints import COCO_SIGMAS

__all__ = ["oks", "oks_matrix", "oks_nms"]

_EPS = np.spacing(1)


def _as_sigmas(sigmas: Sequence[float] | np.ndarray, num_joints: int) -> np.ndarray:
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] != num_joints:
        raise ValueError(
            f"sigmas must have one value per joint: got shape {s.shape}, poses have {num_joints} joints"
        )
    if not np.all(s > 0):
        raise ValueError("sigmas must all be > 0")
    return s


def _as_poses(poses: np.ndarray, name: str) -> np.ndarray:
    """(N, J, 2|3) -> (N, J, 2) float64; the third column (score/visibility) is dropped."""
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] not in (2, 3):
        raise ValueError(f"{name} must have shape (N, J, 2) or (N, J, 3), got {p.shape}")
    if not np.all(np.isfinite(p[..., :2])):
        raise ValueError(f"{name} contains non-finite coordinates")
    return p[..., :2]


def _as_areas(areas: np.ndarray | float, n: int, name: str) -> np.ndarray:
    a = np.asarray(areas, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one area per pose), got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must be finite and >= 0 (pixels^2)")
    return a


def oks_matrix(
    poses_a: np.ndarray,
    poses_b: np.ndarray,
    areas_a: np.ndarray | float,
    areas_b: np.ndarray | float,
    sigmas: Sequence[float] | np.ndarray = COCO_SIGMAS,
) -> np.ndarray:
    """Pairwise OKS between two sets of poses.

    Args:
        poses_a: (N, J, 2) or (N, J, 3) keypoints in pixels; a third column is ignored.
        poses_b: (M, J, 2) or (M, J, 3) keypoints in pixels.
        areas_a: (N,) pose areas in pixels^2 (a scalar is broadcast).
        areas_b: (M,) pose areas in pixels^2 (a scalar is broadcast).
        sigmas: (J,) per-joint OKS sigmas (COCO's by default).

    Returns:
        (N, M) float64 OKS values in (0, 1]; 1 where two poses coincide.
    """
    a = _as_poses(poses_a, "poses_a")
    b = _as_poses(poses_b, "poses_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"poses_a has {a.shape[1]} joints but poses_b has {b.shape[1]}")
    s = _as_sigmas(sigmas, a.shape[1])
    area_a = _as_areas(areas_a, a.shape[0], "areas_a")
    area_b = _as_areas(areas_b, b.shape[0], "areas_b")

    d2 = np.sum((a[:, None, :, :] - b[None, :, :, :]) ** 2, axis=-1)  # (N, M, J)
    mean_area = (area_a[:, None] + area_b[None, :]) / 2.0 + _EPS  # (N, M)
    e = d2 / ((2.0 * s) ** 2)[None, None, :] / mean_area[:, :, None] / 2.0
    return np.exp(-e).mean(axis=-1)


def oks_pairs(
    poses_a: np.ndarray,
    poses_b: np.ndarray,
    areas: np.ndarray | float,
    sigmas: Sequence[float] | np.ndarray = COCO_SIGMAS,
) -> np.ndarray:
    """OKS of each pose in `poses_a` with the pose at the same index in `poses_b`.

    poses_a, poses_b: (N, J, 2|3) pixels; areas: (N,) pixels^2 of each pair (one area, as when two
    predictions of the same person are compared). Returns (N,) float64: the diagonal of
    `oks_matrix` without the N x N work.
    """
    a = _as_poses(poses_a, "poses_a")
    b = _as_poses(poses_b, "poses_b")
    if a.shape != b.shape:
        raise ValueError(f"poses_a {a.shape} and poses_b {b.shape} must pair up")
    s = _as_sigmas(sigmas, a.shape[1])
    area = _as_areas(areas, a.shape[0], "areas") + _EPS
    d2 = np.sum((a - b) ** 2, axis=-1)  # (N, J)
    return np.exp(-d2 / ((2.0 * s) ** 2)[None, :] / area[:, None] / 2.0).mean(axis=-1)


def oks(
    kpts_a: np.ndarray,
    kpts_b: np.ndarray,
    area_a: float,
    area_b: np.ndarray | float | None = None,
    sigmas: Sequence[float] | np.ndarray = COCO_SIGMAS,
) -> np.ndarray:
    """OKS of one pose against many.

    Args:
        kpts_a: (J, 2) or (J, 3) keypoints of one pose, pixels.
        kpts_b: (M, J, 2) or (M, J, 3) keypoints of M poses, pixels (a single (J, 2|3) pose is
            accepted and treated as M = 1).
        area_a: area of pose a, pixels^2.
        area_b: (M,) areas of the poses in b, pixels^2; None uses `area_a` for all of them.
        sigmas: (J,) per-joint OKS sigmas.

    Returns:
        (M,) float64 OKS values.
    """
    a = np.asarray(kpts_a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"kpts_a must be one pose of shape (J, 2) or (J, 3), got {a.shape}")
    b = np.asarray(kpts_b, dtype=np.float64)
    if b.ndim == 2:
        b = b[None]
    area_b = area_a if area_b is None else area_b
    return oks_matrix(a[None], b, np.float64(area_a), area_b, sigmas)[0]


def oks_nms(
    poses: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    threshold: float = 0.9,
    sigmas: Sequence[float] | np.ndarray = COCO_SIGMAS,
) -> np.ndarray:
    """Greedy OKS non-maximum suppression of the poses of one image.

    Poses are visited by decreasing score (ties keep their input order); a pose is dropped when
    its OKS with an already kept pose is > `threshold`, as in the official `oks_nms`.

    Args:
        poses: (N, J, 2) or (N, J, 3) keypoints, pixels.
        scores: (N,) pose scores.
        areas: (N,) pose areas, pixels^2 (the official code uses (200 s_x) * (200 s_y)).
        threshold: OKS above which the lower-scored pose is suppressed.
        sigmas: (J,) per-joint OKS sigmas.

    Returns:
        (K,) int64 indices into `poses` of the kept poses, highest score first.
    """
    p = _as_poses(poses, "poses")
    n = p.shape[0]
    sc = np.asarray(scores, dtype=np.float64)
    if sc.shape != (n,):
        raise ValueError(f"scores must have shape ({n},) to match poses {p.shape}, got {sc.shape}")
    if not np.all(np.isfinite(sc)):
        raise ValueError("scores contains non-finite values")
    ar = _as_areas(areas, n, "areas")
    if n == 0:
        return np.zeros(0, dtype=np.int64)

    overlap = oks_matrix(p, p, ar, ar, sigmas)  # (N, N)
    order = np.argsort(-sc, kind="stable")
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlap[i] > threshold
    return np.asarray(keep, dtype=np.int64)
