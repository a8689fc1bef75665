"""Top-down COCO keypoint dataset: GT boxes for training, GT or detector boxes for evaluation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from tokenpose.keypoints import COCO_FLIP_PAIRS, COCO_KEYPOINTS, COCO_UPPER_BODY
from tokenpose.data.topdown import (
    DatasetError,
    PersonRecords,
    TopDownDataset,
    drop_unreadable_images,
    handle_bad_data,
    load_json,
)
from tokenpose.data.transforms import (
    COCO_AUGMENTATION,
    Augmentation,
    box_to_center_scale,
    clip_box_to_image,
)

PERSON_CATEGORY_ID = 1


class CocoKeypoints(TopDownDataset):
    """COCO person keypoints, top-down.

    ann_file: COCO keypoint json; image_dir: folder of the json's `file_name`s.
    detections: optional detector results json (list of {image_id, category_id, bbox, score});
    when given (evaluation), every person-category box with score >= det_score_threshold becomes a
    sample with ann_id -1 and no joint labels; otherwise the ground-truth boxes are used, skipping
    crowd annotations, annotations with area <= 0 and those without labelled keypoints (the
    official rules, for training and GT-box evaluation alike).
    train: official augmentation (COCO_AUGMENTATION unless `augmentation` is given).
    on_bad: "raise" (default) or "skip" for missing/unreadable images, image ids missing from the
    json and boxes that do not overlap their image; "skip" drops them with one warning giving
    the count. check_images: verify image files at construction (existence, size, format
    signature; `decode_images=True` also decodes each one), so `len()` counts usable samples.
    """

    dataset = "coco"

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        input_hw: Sequence[int] = (256, 192),
        heatmap_hw: Sequence[int] = (64, 48),
        sigma: float = 2.0,
        train: bool = False,
        detections: str | os.PathLike | None = None,
        det_score_threshold: float = 0.0,
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
        aspect_ratio = input_hw[1] / input_hw[0]
        coco = load_json(self.ann_file)
        if not isinstance(coco, dict) or "images" not in coco:
            raise DatasetError(f"{self.ann_file!r} is not a COCO annotation file (no 'images' list)")
        images = {int(im["id"]): im for im in coco["images"]}
        self.image_ids = sorted(images)  # every image of the json, with or without people
        if detections is None:
            records, problems = self._gt_records(coco.get("annotations", []), images, aspect_ratio)
        else:
            records, problems = self._detection_records(
                os.fspath(detections), images, aspect_ratio, det_score_threshold)
        if check_images:
            records, _, unreadable = drop_unreadable_images(records, decode_images)
            problems += unreadable
        what = f"COCO dataset {self.ann_file!r}" if detections is None else f"detection file {os.fspath(detections)!r}"
        handle_bad_data(problems, on_bad, what)
        super().__init__(
            records, input_hw=input_hw, heatmap_hw=heatmap_hw, sigma=sigma,
            flip_pairs=COCO_FLIP_PAIRS, upper_body_ids=COCO_UPPER_BODY, train=train,
            augmentation=(augmentation or COCO_AUGMENTATION) if train else None, seed=seed,
            on_bad=on_bad,
        )

    def _image_path(self, image: dict) -> str:
        return os.path.join(self.image_dir, image["file_name"])

    def _gt_records(self, annotations: list[dict], images: dict[int, dict], aspect_ratio: float):
        anns = [
            a for a in annotations
            if a.get("category_id", PERSON_CATEGORY_ID) == PERSON_CATEGORY_ID
            and not a.get("iscrowd", 0)
            and a.get("area", 1) > 0
            and max(a.get("keypoints") or [0]) > 0
        ]
        problems = [f"annotation {a['id']}: image id {a['image_id']} is not in the json's images"
                    for a in anns if int(a["image_id"]) not in images]
        anns = [a for a in anns if int(a["image_id"]) in images]
        expected = 3 * len(COCO_KEYPOINTS)
        problems += [f"annotation {a['id']}: {len(a['keypoints'])} keypoint values, expected {expected}"
                     for a in anns if len(a["keypoints"]) != expected]
        anns = [a for a in anns if len(a["keypoints"]) == expected]
        sizes = np.array([[images[a["image_id"]]["width"], images[a["image_id"]]["height"]] for a in anns],
                         dtype=np.float64).reshape(-1, 2)
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        clipped, valid = clip_box_to_image(boxes, sizes[:, 0], sizes[:, 1])
        problems += [
            f"annotation {a['id']}: box {a['bbox']} lies outside image "
            f"{self._image_path(images[a['image_id']])!r} ({int(s[0])}x{int(s[1])})"
            for a, s, v in zip(anns, sizes, valid) if not v
        ]
        anns = [a for a, v in zip(anns, valid) if v]
        kpts = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), len(COCO_KEYPOINTS), 3)
        return self._records(
            [self._image_path(images[a["image_id"]]) for a in anns],
            [a["image_id"] for a in anns], [a["id"] for a in anns], clipped[valid],
            np.ones(len(anns)), kpts, aspect_ratio,
        ), problems

    def _detection_records(self, det_file: str, images: dict[int, dict], aspect_ratio: float, threshold: float):
        dets = load_json(det_file, "detection file")
        if not isinstance(dets, list):
            raise DatasetError(f"detection file {det_file!r} must hold a list of detections")
        fields = ("image_id", "bbox", "score")
        bad = next((i for i, d in enumerate(dets) if not isinstance(d, dict) or any(k not in d for k in fields)), None)
        if bad is not None:
            raise DatasetError(f"detection file {det_file!r}: detection #{bad} is not a COCO result with "
                               f"{', '.join(fields)}: {str(dets[bad])[:80]}")
        dets = [d for d in dets if d.get("category_id", PERSON_CATEGORY_ID) == PERSON_CATEGORY_ID
                and d["score"] >= threshold]
        problems = [f"detection #{i} (score {d['score']:.3f}): image id {d['image_id']} is not in "
                    f"{self.ann_file!r}" for i, d in enumerate(dets) if int(d["image_id"]) not in images]
        dets = [d for d in dets if int(d["image_id"]) in images]
        boxes = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
        sizes = np.array([[images[d["image_id"]]["width"], images[d["image_id"]]["height"]] for d in dets],
                         dtype=np.float64).reshape(-1, 2)
        _, inside = clip_box_to_image(boxes, sizes[:, 0], sizes[:, 1])
        # A box under one pixel wide or high has no person to crop (and a scale near 0 would give
        # a mirrored, hugely magnified crop), so it is reported like a box outside the image.
        big_enough = (boxes[:, 2] >= 1) & (boxes[:, 3] >= 1)
        finite = np.isfinite(boxes).all(axis=1)
        valid = inside & big_enough & finite
        problems += [f"detection on image {d['image_id']}: box {d['bbox']} "
                     + ("is not finite" if not f else "lies outside the image" if not i else "is smaller than one pixel")
                     for d, i, f, v in zip(dets, inside, finite, valid) if not v]
        dets = [d for d, v in zip(dets, valid) if v]
        # Detection boxes are used as given (not clipped), like the official loader.
        return self._records(
            [self._image_path(images[d["image_id"]]) for d in dets], [d["image_id"] for d in dets],
            [-1] * len(dets), boxes[valid], [d["score"] for d in dets],
            np.zeros((len(dets), len(COCO_KEYPOINTS), 3)), aspect_ratio,
        ), problems

    @staticmethod
    def _records(paths, image_ids, ann_ids, boxes, scores, keypoints, aspect_ratio) -> PersonRecords:
        centers, scales = box_to_center_scale(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), aspect_ratio)
        keypoints = np.asarray(keypoints, dtype=np.float64).reshape(len(paths), len(COCO_KEYPOINTS), 3)
        return PersonRecords(
            image_paths=list(paths),
            image_ids=np.asarray(image_ids, dtype=np.int64).reshape(-1),
            ann_ids=np.asarray(ann_ids, dtype=np.int64).reshape(-1),
            centers=centers, scales=scales,
            box_scores=np.asarray(scores, dtype=np.float64).reshape(-1),
            joints=keypoints[..., :2].copy(),
            joints_vis=np.minimum(keypoints[..., 2], 1.0).astype(np.float32),
        )
