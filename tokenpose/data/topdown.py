"""The top-down sample builder shared by the COCO and MPII datasets.

A sample is one person: the image is cropped around the person's box (ground truth or a detector's),
augmented in training mode (reference §6.3), normalised, and paired with Gaussian targets.
Records are kept as flat numpy arrays so a 150k-person train set stays light in every worker.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from tokenpose.data.heatmaps import HeatmapCodec
from tokenpose.data.transforms import (
    Augmentation,
    ImageReadError,
    affine_points,
    crop_person,
    flip_image,
    flip_joints,
    get_affine_transform,
    image_file_problem,
    normalize_image,
    read_image,
    sample_augmentation,
)


class DatasetError(ValueError):
    """Annotations or images that cannot be used; the message names the files / annotation ids."""


@dataclass
class PersonRecords:
    """Flat arrays describing N person crops of J joints."""

    image_paths: list[str]  # N
    image_ids: np.ndarray  # (N,) int64
    ann_ids: np.ndarray  # (N,) int64, -1 for detections
    centers: np.ndarray  # (N, 2) float64 pixels
    scales: np.ndarray  # (N, 2) float64 units of 200 px
    box_scores: np.ndarray  # (N,) float64, 1 for ground truth
    joints: np.ndarray  # (N, J, 2) float64 image pixels, 0-based
    joints_vis: np.ndarray  # (N, J) float32 in {0, 1}

    def __len__(self) -> int:
        return len(self.image_paths)

    def select(self, keep: np.ndarray) -> PersonRecords:
        keep = np.asarray(keep, dtype=bool)
        return PersonRecords(
            [p for p, k in zip(self.image_paths, keep) if k], self.image_ids[keep], self.ann_ids[keep],
            self.centers[keep], self.scales[keep], self.box_scores[keep], self.joints[keep],
            self.joints_vis[keep],
        )


def handle_bad_data(problems: list[str], on_bad: str, what: str) -> None:
    """Raise one DatasetError naming the first few `problems` and their count, or warn once
    (`on_bad="skip"`). Both messages are one line: the CLI prints only the first line of an error."""
    if not problems:
        return
    shown = "; ".join(problems[:3]) + (f"; ... ({len(problems) - 3} more)" if len(problems) > 3 else "")
    if on_bad == "raise":
        raise DatasetError(
            f"{what}: {len(problems)} unusable sample(s): {shown}; drop them with --on-bad skip (on_bad='skip')"
        )
    warnings.warn(f"{what}: skipped {len(problems)} unusable sample(s): {shown}", stacklevel=3)


def load_json(path: str, kind: str = "annotation file"):
    """Parse a json file; errors name the file and what it is (`kind`, e.g. "detection file")."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{kind} not found: {path!r}") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{kind} {path!r} is not valid JSON: {e}") from None


def drop_unreadable_images(records: PersonRecords, decode: bool) -> tuple[PersonRecords, np.ndarray, list[str]]:
    """Records whose image file is missing or unreadable removed: (kept records, keep mask, problems)."""
    bad_files = check_image_files(records.image_paths, decode)
    keep = np.array([p not in bad_files for p in records.image_paths], dtype=bool)
    problems = [f"{bad_files[p]} (image id {i}, annotation {a})"
                for p, i, a, k in zip(records.image_paths, records.image_ids, records.ann_ids, keep) if not k]
    return records.select(keep), keep, problems


class TopDownDataset(Dataset):
    """Person crops with targets, built from `PersonRecords`; subclasses only load the records.

    Each item is a dict:
      image (3, H, W) float32 tensor, normalised RGB model input;
      target (J, h, w) float32 tensor; target_weight (J, 1) float32 tensor;
      image_id int; ann_id int (-1 for detection boxes); image_path str;
      center (2,) float64 pixels, scale (2,) float64 units of 200 px, rotation float degrees:
        the crop actually taken, in the frame of the (possibly mirrored) image;
      flipped bool; box_score float;
      joints (J, 2) float64 and joints_vis (J,) float32: the annotation in image pixels, in the same
        frame as `center` (mirrored and left/right swapped when `flipped`).
    Training mode draws the augmentation from numpy's Generator seeded by (seed, epoch, index),
    so an item is reproducible; call `set_epoch` once per epoch to get new draws.
    """

    dataset = ""  # the ModelConfig.dataset this class serves ("coco", "mpii")

    @classmethod
    def from_config(cls, cfg, ann_file, image_dir, **kwargs):
        """Dataset with the input size, heatmap size and sigma of a `ModelConfig` for this dataset."""
        if cfg.dataset != cls.dataset:
            raise ValueError(f"variant {cfg.name!r} is for {cfg.dataset!r}, not {cls.dataset.upper()}")
        return cls(ann_file, image_dir, input_hw=cfg.input_hw, heatmap_hw=cfg.heatmap_hw, sigma=cfg.sigma, **kwargs)

    def __init__(
        self,
        records: PersonRecords,
        *,
        input_hw: Sequence[int],
        heatmap_hw: Sequence[int],
        sigma: float,
        flip_pairs: Sequence[Sequence[int]],
        upper_body_ids: Sequence[int],
        train: bool,
        augmentation: Augmentation | None,
        seed: int,
        on_bad: str = "raise",
    ) -> None:
        self.records = records
        self.on_bad = on_bad
        self.skipped_at_load = 0  # images that failed to decode in __getitem__ (on_bad="skip")
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.codec = HeatmapCodec(self.input_hw, (int(heatmap_hw[0]), int(heatmap_hw[1])), float(sigma))
        self.flip_pairs = tuple(tuple(p) for p in flip_pairs)
        self.upper_body_ids = tuple(upper_body_ids)
        self.train = train
        self.augmentation = augmentation
        self.seed = int(seed)
        self.epoch = 0

    @property
    def aspect_ratio(self) -> float:
        return self.input_hw[1] / self.input_hw[0]

    @property
    def num_joints(self) -> int:
        return self.records.joints.shape[1]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch` (training mode)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        if self.on_bad == "raise":
            return self._sample(index)
        # The construction-time check reads only file headers; a file that still fails to decode
        # is skipped here (the next sample takes its place), with a warning and a running count.
        for attempt in range(n):
            try:
                return self._sample((index + attempt) % n)
            except (ImageReadError, FileNotFoundError) as exc:
                self.skipped_at_load += 1
                warnings.warn(f"{exc}; sample skipped ({self.skipped_at_load} so far)", stacklevel=2)
        raise DatasetError(f"none of the {n} samples has a readable image")

    def _sample(self, index: int) -> dict:
        rec = self.records
        path = rec.image_paths[index]
        image = read_image(path)
        center, scale, rotation, flipped = rec.centers[index], rec.scales[index], 0.0, False
        joints, vis = rec.joints[index], rec.joints_vis[index]

        if self.train and self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            crop = sample_augmentation(
                rng, self.augmentation, center, scale, joints, vis,
                self.upper_body_ids, self.aspect_ratio, image.shape[1],
            )
            center, scale, rotation, flipped = crop.center, crop.scale, crop.rotation, crop.flip
            if flipped:
                image = flip_image(image)
                joints, vis = flip_joints(joints, vis, image.shape[1], self.flip_pairs)

        crop_bgr = crop_person(image, center, scale, rotation, self.input_hw)
        hm_h, hm_w = self.codec.heatmap_hw
        joints_hm = affine_points(joints, get_affine_transform(center, scale, rotation, (hm_w, hm_h)))
        target, target_weight = self.codec.encode(joints_hm, vis)
        return {
            "image": torch.from_numpy(normalize_image(crop_bgr, bgr=True)),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(target_weight),
            "image_id": int(rec.image_ids[index]),
            "ann_id": int(rec.ann_ids[index]),
            "image_path": path,
            "center": np.asarray(center, dtype=np.float64),
            "scale": np.asarray(scale, dtype=np.float64),
            "rotation": float(rotation),
            "flipped": flipped,
            "box_score": float(rec.box_scores[index]),
            "joints": np.asarray(joints, dtype=np.float64),
            "joints_vis": np.asarray(vis, dtype=np.float32),
        }


def check_image_files(paths: Sequence[str], decode: bool) -> dict[str, str]:
    """{path: problem} for every distinct unusable image file."""
    problems = {}
    for path in dict.fromkeys(paths):
        problem = image_file_problem(path, decode=decode)
        if problem is not None:
            problems[path] = problem
    return problems
