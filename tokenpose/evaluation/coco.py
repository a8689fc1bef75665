"""COCO keypoint evaluation: rescoring, per-image OKS NMS and pycocotools' COCOeval.

The pipeline follows the official TokenPose/HRNet `COCODataset.evaluate`:

1. Rescoring, per person: kpt_score = mean of the joint maxvals that are > `in_vis_thre` (0.2),
   or 0 when none is; score = kpt_score * box_score (box_score is 1 for ground-truth boxes).
2. Per image, greedy OKS NMS with threshold 0.9 over all joints, with the person area
   (200 s_x) * (200 s_y) from the crop scale (see `tokenpose.evaluation.oks`).
3. Results in the COCO format (`keypoints` = [x, y, maxval] * J) are scored by
   `pycocotools.cocoeval.COCOeval(..., "keypoints")`, restricted to the images predicted on.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tokenpose.keypoints import COCO_SIGMAS, PIXEL_STD
from tokenpose.data.heatmaps import rescore
from tokenpose.evaluation.oks import oks_nms
from tokenpose.files import atomic_write

__all__ = ["COCO_STAT_NAMES", "CocoEvaluator", "rescore"]

# The order of COCOeval.stats for iouType "keypoints".
COCO_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl",
)


class CocoEvaluator:
    """Accumulates top-down person predictions and scores them with pycocotools.

    Args:
        ann_file: path to a COCO person-keypoints json, or a loaded `pycocotools.coco.COCO`.
        in_vis_thre: maxval threshold of the rescoring (official 0.2).
        oks_thre: OKS NMS threshold (official 0.9); None disables NMS.
        sigmas: (J,) per-joint OKS sigmas for the NMS (COCO's by default).
        category_id: COCO category id written into the results (1 = person).

    Example:
        >>> ev = CocoEvaluator("person_keypoints_val2017.json")
        >>> ev.add(image_ids, keypoints, maxvals, centers, scales, box_scores)
        >>> stats = ev.evaluate()   # {"AP": ..., "AP50": ..., ...}
    """

    def __init__(
        self,
        ann_file: str | os.PathLike | COCO,
        *,
        in_vis_thre: float = 0.2,
        oks_thre: float | None = 0.9,
        sigmas: Sequence[float] = COCO_SIGMAS,
        category_id: int = 1,
    ) -> None:
        if isinstance(ann_file, COCO):
            self.coco = ann_file
        else:
            path = Path(ann_file)
            if not path.is_file():
                raise FileNotFoundError(f"COCO annotation file not found: {path}")
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(path))
        self.in_vis_thre = float(in_vis_thre)
        self.oks_thre = None if oks_thre is None else float(oks_thre)
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.num_joints = int(self.sigmas.shape[0])
        self.category_id = int(category_id)
        self.last_summary: str = ""
        self._known_image_ids = set(self.coco.getImgIds())
        self._image_ids: list[np.ndarray] = []
        self._keypoints: list[np.ndarray] = []
        self._maxvals: list[np.ndarray] = []
        self._centers: list[np.ndarray] = []
        self._scales: list[np.ndarray] = []
        self._box_scores: list[np.ndarray] = []

    def __len__(self) -> int:
        """Number of person predictions added so far."""
        return int(sum(len(ids) for ids in self._image_ids))

    def reset(self) -> None:
        """Forget every prediction added so far."""
        for buf in (self._image_ids, self._keypoints, self._maxvals, self._centers,
                    self._scales, self._box_scores):
            buf.clear()

    def add(
        self,
        image_ids: Sequence[int] | np.ndarray,
        keypoints: np.ndarray,
        maxvals: np.ndarray,
        centers: np.ndarray,
        scales: np.ndarray,
        box_scores: Sequence[float] | np.ndarray,
    ) -> None:
        """Add a batch of N person predictions (already decoded to image coordinates).

        Args:
            image_ids: (N,) COCO image ids; every one must be in the annotation file.
            keypoints: (N, J, 2) joint coordinates (x, y) in image pixels.
            maxvals: (N, J, 1) or (N, J) heatmap maxima (the per-joint confidence).
            centers: (N, 2) crop centers (x, y) in image pixels.
            scales: (N, 2) crop scales (s_x, s_y) in units of 200 px.
            box_scores: (N,) person-box scores (1 for ground-truth boxes).
        """
        ids = np.asarray(image_ids)
        if ids.ndim != 1:
            raise ValueError(f"image_ids must have shape (N,), got {ids.shape}")
        n = ids.shape[0]
        if n and not np.issubdtype(ids.dtype, np.integer):
            if not np.issubdtype(ids.dtype, np.floating) or np.any(ids != np.round(ids)):
                raise ValueError(f"image_ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        j = self.num_joints
        kpts = np.asarray(keypoints, dtype=np.float64)
        if kpts.shape != (n, j, 2):
            raise ValueError(f"keypoints must have shape (N, J, 2) = ({n}, {j}, 2), got {kpts.shape}")
        mv = np.asarray(maxvals, dtype=np.float64)
        if mv.shape == (n, j):
            mv = mv[..., None]
        if mv.shape != (n, j, 1):
            raise ValueError(f"maxvals must have shape ({n}, {j}, 1) or ({n}, {j}), got {mv.shape}")
        ctr = np.asarray(centers, dtype=np.float64)
        if ctr.shape != (n, 2):
            raise ValueError(f"centers must have shape ({n}, 2), got {ctr.shape}")
        scl = np.asarray(scales, dtype=np.float64)
        if scl.shape != (n, 2):
            raise ValueError(f"scales must have shape ({n}, 2), got {scl.shape}")
        bs = np.asarray(box_scores, dtype=np.float64)
        if bs.shape != (n,):
            raise ValueError(f"box_scores must have shape ({n},), got {bs.shape}")
        for name, arr in (("keypoints", kpts), ("maxvals", mv), ("centers", ctr),
                          ("scales", scl), ("box_scores", bs)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} contains non-finite values")
        if np.any(scl <= 0):
            raise ValueError("scales must be > 0")
        unknown = sorted(set(ids.tolist()) - self._known_image_ids)
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(
                f"{len(unknown)} image id(s) are not in the annotation file: {shown}"
            )
        self._image_ids.append(ids)
        self._keypoints.append(kpts)
        self._maxvals.append(mv)
        self._centers.append(ctr)
        self._scales.append(scl)
        self._box_scores.append(bs)

    def results(self) -> list[dict]:
        """The COCO results list after rescoring and per-image OKS NMS.

        Returns:
            A list of dicts with `image_id`, `category_id`, `keypoints` ([x, y, maxval] * J,
            pixels), `score`, `center` and `scale`, grouped by image (ascending id), highest score
            first within an image. Empty when nothing was added.
        """
        if not self._image_ids:
            return []
        ids = np.concatenate(self._image_ids)
        kpts = np.concatenate(self._keypoints)
        mv = np.concatenate(self._maxvals)
        ctr = np.concatenate(self._centers)
        scl = np.concatenate(self._scales)
        scores = rescore(mv, np.concatenate(self._box_scores), self.in_vis_thre)
        areas = np.prod(scl * PIXEL_STD, axis=1)
        poses = np.concatenate([kpts, mv], axis=2)  # (N, J, 3)

        out: list[dict] = []
        for img in np.unique(ids):
            idx = np.flatnonzero(ids == img)
            if self.oks_thre is None:
                keep = idx[np.argsort(-scores[idx], kind="stable")]
            else:
                keep = idx[oks_nms(poses[idx], scores[idx], areas[idx], self.oks_thre, self.sigmas)]
            for k in keep:
                out.append({
                    "image_id": int(img),
                    "category_id": self.category_id,
                    "keypoints": [float(v) for v in poses[k].reshape(-1)],
                    "score": float(scores[k]),
                    "center": [float(v) for v in ctr[k]],
                    "scale": [float(v) for v in scl[k]],
                })
        return out

    def write_results(self, path: str | os.PathLike) -> Path:
        """Write `results()` as json, atomically (a temporary file in the same folder is renamed).

        Returns:
            The path written.
        """
        path = Path(path)
        with atomic_write(path, "w") as f:
            json.dump(self.results(), f)
        return path

    def evaluate(
        self,
        image_ids: Sequence[int] | None = None,
        *,
        verbose: bool = False,
    ) -> dict[str, float]:
        """Score the accumulated predictions with pycocotools' COCOeval ("keypoints").

        Args:
            image_ids: the images to evaluate on (COCOeval `params.imgIds`). Default: the images
                that predictions were added for, so that a subset evaluation is meaningful. Pass
                the full list to count images without any prediction as misses.
            verbose: print pycocotools' output. Either way it is kept in `self.last_summary`.

        Returns:
            The 10 COCO keypoint stats, keyed by `COCO_STAT_NAMES` (AP, AP50, AP75, APm, APl,
            AR, AR50, AR75, ARm, ARl), each in [0, 1] (-1 where pycocotools has no ground truth).
        """
        results = self.results()
        if not results:
            raise ValueError("no predictions to evaluate: call add() with at least one person first")
        if image_ids is None:
            img_ids = sorted({r["image_id"] for r in results})
        else:
            img_ids = sorted({int(i) for i in image_ids})
            unknown = sorted(set(img_ids) - self._known_image_ids)
            if unknown:
                raise ValueError(f"image_ids not in the annotation file: {unknown[:10]}")
            if not img_ids:
                raise ValueError("image_ids is empty")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            # loadRes adds fields to the dicts it is given; keep ours untouched.
            coco_dt = self.coco.loadRes(copy.deepcopy(results))
            coco_eval = COCOeval(self.coco, coco_dt, "keypoints")
            coco_eval.params.imgIds = img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.last_summary = buf.getvalue()
        if verbose:
            print(self.last_summary, end="")
        return {name: float(v) for name, v in zip(COCO_STAT_NAMES, coco_eval.stats)}
