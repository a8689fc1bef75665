"""MPII PCKh, following the official TokenPose/HRNet `MPIIDataset.evaluate`.

A joint is correct when ||pred - gt|| / (0.6 * ||head-box diagonal||) <= threshold (0.5), counted
over visible joints only. "Mean" excludes pelvis (6) and thorax (7) and weights every other joint
by its number of visible instances. "Mean@0.1" is computed, as in the official code, at index 11
of the grid 0:0.01:0.5, i.e. at a threshold of **0.11** (`MEAN_AT_0_1_THRESHOLD`); the name is
kept so numbers stay comparable with published tables.

Predictions and ground truth may be 0-based or 1-based as long as both use the same convention:
only differences of coordinates enter the metric (the official code adds 1 to 0-based
predictions and compares them with the 1-based ground truth of `gt_valid.mat`).

Head boxes (`headboxes_src` of the official `gt_valid.mat`) are required. For data that has none
(e.g. the `mpii_mini` fixture) `head_sizes_from_head_segment` gives a documented stand-in that
must be passed explicitly; numbers computed with it are not comparable with published PCKh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenpose.keypoints import MPII_KEYPOINTS

__all__ = [
    "HEAD_SIZE_FACTOR",
    "MEAN_AT_0_1_THRESHOLD",
    "PCKhResult",
    "head_sizes_from_head_segment",
    "pckh",
]

# Official SC_BIAS: the PCKh normaliser is 0.6 x the head-box diagonal.
HEAD_SIZE_FACTOR = 0.6
# The official "Mean@0.1" reads row 11 of np.arange(0, 0.51, 0.01), which is 0.11.
MEAN_AT_0_1_THRESHOLD = np.arange(0, 0.5 + 0.01, 0.01)[11]

_NUM_JOINTS = 16
_PELVIS, _THORAX, _UPPER_NECK, _HEAD_TOP = 6, 7, 8, 9
# (name, joint indices) of the official summary, in its order.
_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Head", (_HEAD_TOP,)),
    ("Shoulder", (13, 12)),
    ("Elbow", (14, 11)),
    ("Wrist", (15, 10)),
    ("Hip", (3, 2)),
    ("Knee", (4, 1)),
    ("Ankle", (5, 0)),
)


@dataclass(frozen=True)
class PCKhResult:
    """PCKh of a set of predictions.

    Attributes:
        per_joint: (16,) PCKh in percent per MPII joint at `threshold` (NaN for a joint with
            no visible instance).
        joint_count: (16,) number of visible ground-truth instances per joint.
        summary: the official table, in percent: Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle,
            Mean, Mean@0.1.
        threshold: the PCKh threshold of `per_joint` and of the group entries and Mean.
    """

    per_joint: np.ndarray
    joint_count: np.ndarray
    summary: dict[str, float]
    threshold: float

    @property
    def mean(self) -> float:
        return self.summary["Mean"]

    @property
    def mean_at_0_1(self) -> float:
        return self.summary["Mean@0.1"]

    def per_joint_named(self) -> dict[str, float]:
        """Per-joint PCKh keyed by MPII joint name."""
        return {name: float(v) for name, v in zip(MPII_KEYPOINTS, self.per_joint)}


def _visibility(joints_vis: np.ndarray, n: int) -> np.ndarray:
    v = np.asarray(joints_vis)
    if v.ndim == 3:  # HRNet's (N, 16, 3) joints_vis: the flag is repeated per column
        v = v[..., 0]
    if v.shape != (n, _NUM_JOINTS):
        raise ValueError(
            f"joints_vis must have shape ({n}, {_NUM_JOINTS}) or ({n}, {_NUM_JOINTS}, k), "
            f"got {np.shape(joints_vis)}"
        )
    return v > 0


def _joints(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] != _NUM_JOINTS or a.shape[2] < 2:
        raise ValueError(f"{name} must have shape (N, {_NUM_JOINTS}, 2), got {a.shape}")
    return a[..., :2]


def head_sizes_from_head_segment(joints_gt: np.ndarray, joints_vis: np.ndarray) -> np.ndarray:
    """Stand-in head sizes for data without head boxes (NOT the official normaliser).

    Uses the head segment, ||head_top (9) - upper_neck (8)||, as the PCKh normaliser directly:
    the returned "head-box diagonal" is that length / 0.6, so that `pckh` (which multiplies by
    0.6) normalises by exactly the head-segment length. On MPII the head segment is close to
    0.6 x the head-box diagonal, but results are only indicative.

    Args:
        joints_gt: (N, 16, 2) ground-truth joints, pixels.
        joints_vis: (N, 16) visibility flags (or HRNet's (N, 16, 3)).

    Returns:
        (N,) stand-in head-box diagonals in pixels, to pass as `pckh(..., head_sizes=...)`.
    """
    gt = _joints(joints_gt, "joints_gt")
    vis = _visibility(joints_vis, gt.shape[0])
    missing = np.flatnonzero(~(vis[:, _HEAD_TOP] & vis[:, _UPPER_NECK]))
    if missing.size:
        raise ValueError(
            f"head_top and upper_neck must both be labelled to derive a stand-in head size; "
            f"missing for person index(es) {missing[:10].tolist()}"
        )
    seg = np.linalg.norm(gt[:, _HEAD_TOP] - gt[:, _UPPER_NECK], axis=-1)
    if np.any(seg <= 0):
        raise ValueError(
            f"zero head-segment length for person index(es) {np.flatnonzero(seg <= 0)[:10].tolist()}"
        )
    return seg / HEAD_SIZE_FACTOR


def pckh(
    preds: np.ndarray,
    joints_gt: np.ndarray,
    joints_vis: np.ndarray,
    headboxes: np.ndarray | None = None,
    *,
    head_sizes: np.ndarray | None = None,
    threshold: float = 0.5,
) -> PCKhResult:
    """MPII PCKh of N predicted poses.

    Args:
        preds: (N, 16, 2) predicted joints (x, y) in image pixels, 0-based; a third column is
            ignored.
        joints_gt: (N, 16, 2) ground-truth joints in the same pixel convention as `preds`.
        joints_vis: (N, 16) visibility flags (> 0 = labelled), or HRNet's (N, 16, 3).
        headboxes: (N, 2, 2) head boxes [[x1, y1], [x2, y2]] in pixels (the official
            `headboxes_src`, transposed to person-first). The normaliser is 0.6 x the diagonal.
        head_sizes: (N,) head-box diagonals in pixels, instead of `headboxes`; e.g. the explicit
            stand-in `head_sizes_from_head_segment(joints_gt, joints_vis)`.
        threshold: PCKh threshold, as a fraction of the normaliser.

    Returns:
        A `PCKhResult` (values in percent).
    """
    pred = _joints(preds, "preds")
    gt = _joints(joints_gt, "joints_gt")
    n = pred.shape[0]
    if gt.shape[0] != n:
        raise ValueError(f"preds has {n} poses but joints_gt has {gt.shape[0]}")
    if n == 0:
        raise ValueError("no poses to evaluate (N = 0)")
    vis = _visibility(joints_vis, n)

    if headboxes is None and head_sizes is None:
        raise ValueError(
            "PCKh needs head boxes: pass headboxes (N, 2, 2) from the official gt_valid.mat "
            "(headboxes_src), or, for data without head boxes, ask explicitly for the stand-in "
            "head_sizes=head_sizes_from_head_segment(joints_gt, joints_vis)"
        )
    if headboxes is not None and head_sizes is not None:
        raise ValueError("pass either headboxes or head_sizes, not both")
    if headboxes is not None:
        hb = np.asarray(headboxes, dtype=np.float64)
        if hb.shape != (n, 2, 2):
            raise ValueError(f"headboxes must have shape ({n}, 2, 2), got {hb.shape}")
        sizes = np.linalg.norm(hb[:, 1] - hb[:, 0], axis=-1)
    else:
        sizes = np.asarray(head_sizes, dtype=np.float64)
        if sizes.shape != (n,):
            raise ValueError(f"head_sizes must have shape ({n},), got {sizes.shape}")
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        bad = np.flatnonzero(~(np.isfinite(sizes) & (sizes > 0)))
        raise ValueError(f"head sizes must be finite and > 0; bad for person index(es) {bad[:10].tolist()}")
    for name, arr in (("preds", pred), ("joints_gt", gt)):
        if not np.all(np.isfinite(arr[vis])):
            raise ValueError(f"{name} contains non-finite coordinates at visible joints")

    err = np.linalg.norm(pred - gt, axis=-1) / (HEAD_SIZE_FACTOR * sizes)[:, None]  # (N, 16)
    count = vis.sum(axis=0)  # (16,)

    def pck_at(t: float) -> np.ndarray:
        hits = ((err <= t) & vis).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, 100.0 * hits / np.maximum(count, 1), np.nan)

    per_joint = pck_at(threshold)
    low = pck_at(MEAN_AT_0_1_THRESHOLD)
    weights = count.astype(np.float64)
    weights[[_PELVIS, _THORAX]] = 0.0
    if weights.sum() == 0:
        raise ValueError("no visible joints outside pelvis/thorax: PCKh Mean is undefined")
    weights /= weights.sum()

    summary = {name: float(np.mean(per_joint[list(idx)])) for name, idx in _GROUPS}
    summary["Mean"] = float(np.sum(np.nan_to_num(per_joint) * weights))
    summary["Mean@0.1"] = float(np.sum(np.nan_to_num(low) * weights))
    return PCKhResult(per_joint=per_joint, joint_count=count, summary=summary, threshold=float(threshold))
