"""Top-down MPII dataset from the HRNet json layout (1-based MATLAB coordinates).

Each json entry: {"image": file name, "center": [x, y], "scale": s (person height / 200),
"joints": [[x, y] * 16], "joints_vis": [0/1 * 16]} (joints absent in the test split).
Reference §6.1: c_y += 15 s, s *= 1.25, then center and joints - 1 (to 0-based pixels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tokenpose.keypoints import MPII_FLIP_PAIRS, MPII_KEYPOINTS, MPII_UPPER_BODY
from tokenpose.data.topdown import (
    DatasetError,
    PersonRecords,
    TopDownDataset,
    drop_unreadable_images,
    handle_bad_data,
    load_json,
)
from tokenpose.data.transforms import MPII_AUGMENTATION, Augmentation


class MpiiKeypoints(TopDownDataset):
    """MPII human pose, top-down; items as in `TopDownDataset` plus `headbox` when given.

    ann_file: HRNet-layout json (a list of people); image_dir: folder of the `image` names.
    headboxes: optional (N, 2, 2) head boxes [[x1, y1], [x2, y2]] in the annotation's own
    coordinates, one per json entry (MPII's gt_valid.mat `headboxes_src` transposed to N first),
    returned as `headbox` for PCKh; only their diagonal length is ever used.
    train: official MPII augmentation (no half body, scale 0.25, rotation 30, flip).
    on_bad / check_images / decode_images: as in `CocoKeypoints` (missing or unreadable images).
    `image_id` is the number in the image file name (MPII names are digits), else -1; `ann_id` is
    the entry's index in the json.
    """

    dataset = "mpii"

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        input_hw: Sequence[int] = (256, 256),
        heatmap_hw: Sequence[int] = (64, 64),
        sigma: float = 2.0,
        train: bool = False,
        headboxes: np.ndarray | None = None,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        on_bad: str = "raise",
        check_images: bool = True,
        decode_images: bool = False,
    ) -> None:
        if on_bad not in ("raise", "skip"):
            raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")
        self.ann_file = os.fspath(ann_file)
        self.image_dir = os.fspath(image_dir)
        records = self._load(self.ann_file)
        self.headboxes = None
        if headboxes is not None:
            hb = np.asarray(headboxes, dtype=np.float64)
            if hb.shape != (len(records), 2, 2):
                raise ValueError(f"headboxes must be ({len(records)}, 2, 2) for {self.ann_file!r}, got {hb.shape}")
            self.headboxes = hb
        problems = []
        if check_images:
            records, keep, problems = drop_unreadable_images(records, decode_images)
            if self.headboxes is not None:
                self.headboxes = self.headboxes[keep]
        handle_bad_data(problems, on_bad, f"MPII dataset {self.ann_file!r}")
        super().__init__(
            records, input_hw=input_hw, heatmap_hw=heatmap_hw, sigma=sigma,
            flip_pairs=MPII_FLIP_PAIRS, upper_body_ids=MPII_UPPER_BODY, train=train,
            augmentation=(augmentation or MPII_AUGMENTATION) if train else None, seed=seed,
            on_bad=on_bad,
        )

    def _load(self, ann_file: str) -> PersonRecords:
        entries = load_json(ann_file)
        if not isinstance(entries, list):
            raise DatasetError(f"{ann_file!r} is not an HRNet-layout MPII file (expected a list of people)")
        j = len(MPII_KEYPOINTS)
        n = len(entries)
        centers = np.array([e["center"] for e in entries], dtype=np.float64).reshape(n, 2)
        s = np.array([e["scale"] for e in entries], dtype=np.float64).reshape(n)
        # Official quirk kept: entries with center x == -1 get neither the shift nor the 1.25.
        known = centers[:, 0] != -1
        centers[:, 1] += np.where(known, 15 * s, 0.0)
        s = np.where(known, s * 1.25, s)
        joints = np.zeros((n, j, 2))
        vis = np.zeros((n, j), dtype=np.float32)
        for i, e in enumerate(entries):  # json parsing, once per entry
            if "joints" in e:
                pts = np.asarray(e["joints"], dtype=np.float64)
                if pts.shape != (j, 2):
                    raise DatasetError(f"{ann_file!r} entry {i} ({e.get('image')}): expected {j} joints, "
                                       f"got shape {pts.shape}")
                joints[i] = pts - 1
                vis[i] = np.asarray(e["joints_vis"], dtype=np.float32) > 0
        return PersonRecords(
            image_paths=[os.path.join(self.image_dir, e["image"]) for e in entries],
            image_ids=np.array([_image_number(e["image"]) for e in entries], dtype=np.int64).reshape(n),
            ann_ids=np.arange(n, dtype=np.int64),
            centers=centers - 1,
            scales=np.stack([s, s], axis=-1),
            box_scores=np.ones(n),
            joints=joints,
            joints_vis=vis,
        )

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if self.headboxes is not None:
            item["headbox"] = self.headboxes[index]
        return item


def _image_number(name: str) -> int:
    stem = os.path.splitext(os.path.basename(name))[0]
    return int(stem) if stem.isdigit() else -1
