"""Run engines over a COCO or MPII evaluation set: COCO keypoint AP, MPII PCKh, engine parity.

The dataset classes give the person crops (center/scale from ground-truth or detector boxes, the
official rules); `PosePredictor` crops every image once, batches the people of many images into
one engine call and decodes them in one pass; `CocoEvaluator` (rescoring, OKS NMS, pycocotools)
or `pckh` score the keypoints. `validate` runs two engines on identical crops and reports how far
apart they are, batch by batch, without keeping the heatmaps.

Data roots are resolved by `tokenpose.data.roots` with the split "val" (COCO) or "valid" (MPII);
MPII head boxes come from annot/gt_valid.mat (`headboxes_src`) or `head_boxes=` (.mat, .npy or .json).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose.data.coco import CocoKeypoints, PersonRecords
from tokenpose.data.mpii import MpiiKeypoints
from tokenpose.data.roots import DataRootError, resolve_data_files
from tokenpose.data.transforms import read_image
from tokenpose.engines.base import Engine
from tokenpose.engines.predictor import PosePredictor
from tokenpose.errors import TokenPoseError
from tokenpose.evaluation.coco import CocoEvaluator
from tokenpose.evaluation.mpii import head_sizes_from_head_segment, pckh
from tokenpose.evaluation.oks import oks_pairs
from tokenpose.files import check_writable
from tokenpose.keypoints import PIXEL_STD
from tokenpose.models.config import ModelConfig

__all__ = [
    "EvalDataset", "EvalReport", "ValidationReport", "compare_engines", "evaluate", "open_dataset",
    "predict_dataset", "read_head_boxes", "validate",
]

Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass
class EvalDataset:
    """The persons to evaluate: crops (center/scale), ground truth and where it all came from."""

    kind: str  # "coco" or "mpii"
    records: PersonRecords
    ann_file: Path
    image_dir: Path
    det_file: Path | None = None
    headboxes: np.ndarray | None = None  # (N, 2, 2) MPII head boxes, pixels
    head_size_standin: bool = False  # MPII: the head-segment stand-in instead of head boxes
    notes: list[str] = field(default_factory=list)
    # COCO: the images AP is computed over. Every image of the annotation file, as the official
    # evaluation does (people in images without a detection count as misses), or the images kept
    # by `max_images`.
    ap_image_ids: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return len(set(self.records.image_paths))


def read_head_boxes(path: str | os.PathLike) -> np.ndarray:
    """MPII head boxes (N, 2, 2) [[x1, y1], [x2, y2]] from gt_valid.mat (`headboxes_src`, 2x2xN),
    a .npy array or a .json list."""
    path = Path(path)
    if not path.is_file():
        raise DataRootError(f"head-box file not found: {path}")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        mat = loadmat(str(path))
        if "headboxes_src" not in mat:
            raise DataRootError(f"{path} holds no 'headboxes_src' (is it MPII's gt_valid.mat?)")
        boxes = np.transpose(mat["headboxes_src"], (2, 0, 1))
    elif path.suffix == ".npy":
        boxes = np.load(path)
    else:
        with open(path) as f:
            boxes = np.asarray(json.load(f), dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 3 or boxes.shape[1:] != (2, 2):
        raise DataRootError(f"{path}: head boxes must have shape (N, 2, 2), got {boxes.shape}")
    return boxes


def open_dataset(
    data_root: str | os.PathLike,
    config: ModelConfig,
    *,
    ann_file: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    det_file: str | os.PathLike | None = None,
    head_boxes: str | os.PathLike | np.ndarray | None = None,
    head_size_standin: bool = False,
    max_images: int | None = None,
    on_bad: str = "raise",
) -> EvalDataset:
    """The evaluation persons of `data_root` for a model `config` (its dataset picks COCO or MPII).

    det_file: COCO detection results (person boxes) instead of the ground-truth boxes.
    max_images: keep only the first N images (sorted by path), for quick checks.
    on_bad: "raise" on missing/unreadable images, detections with an unknown image id or an
    unusable box, and bad annotations; "skip" drops them (one warning with the count).
    MPII needs head boxes for PCKh (`head_boxes`, or annot/gt_valid.mat under the root); without
    them pass `head_size_standin=True` to use the head-segment stand-in (not comparable with
    published PCKh), else evaluation stops with an error.
    """
    kind = config.dataset
    root = Path(data_root)
    ann, images = resolve_data_files(kind, root, ann_file, image_dir, split="val" if kind == "coco" else "valid")
    if kind == "mpii":
        if det_file is not None:
            raise DataRootError("--det-file applies to COCO only (MPII evaluation uses the annotated person boxes)")
        if head_boxes is None and not head_size_standin and (root / "annot" / "gt_valid.mat").is_file():
            head_boxes = root / "annot" / "gt_valid.mat"
        if head_boxes is not None and not isinstance(head_boxes, np.ndarray):
            head_boxes = read_head_boxes(head_boxes)
    # With on_bad="skip" the dataset warns once about what it dropped: that becomes a note.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if kind == "coco":
            ds = CocoKeypoints.from_config(config, ann, images, detections=det_file, on_bad=on_bad)
        else:
            ds = MpiiKeypoints.from_config(config, ann, images, headboxes=head_boxes, on_bad=on_bad)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for w in caught:
        if not issubclass(w.category, UserWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    hb = ds.headboxes if kind == "mpii" else None
    if kind == "mpii" and hb is None and not head_size_standin:
        raise DataRootError(
            f"MPII PCKh needs head boxes and {root} has none (no annot/gt_valid.mat): pass --head-boxes FILE, "
            "or --head-size-standin for the head-segment stand-in (not comparable with published PCKh)"
        )
    records = ds.records
    if len(records) == 0:
        raise DataRootError(f"no persons to evaluate in {ann}" + (f" with detections {det_file}" if det_file else ""))
    if max_images is not None:
        keep_paths = set(sorted(set(records.image_paths))[:max_images])
        keep = np.array([p in keep_paths for p in records.image_paths])
        records = records.select(keep)
        hb = hb[keep] if hb is not None else None
    ap_image_ids = None
    if kind == "coco":
        if max_images is None:
            ap_image_ids = np.array(sorted(int(i) for i in ds.image_ids), dtype=np.int64)
        else:
            ap_image_ids = np.unique(records.image_ids)
            notes.append(f"AP over the first {len(ap_image_ids)} images only (--max-images)")
        with_boxes = len(np.unique(records.image_ids))
        if det_file is not None and max_images is None and with_boxes < len(ap_image_ids):
            notes.append(f"the detections cover {with_boxes} of {len(ap_image_ids)} images; people in the "
                         "others count as misses, as in the official evaluation")
    if head_size_standin and hb is None:
        notes.append("PCKh uses the head-segment stand-in, not head boxes: not comparable with published PCKh")
    return EvalDataset(kind, records, ann, images, Path(det_file) if det_file else None, hb,
                       head_size_standin and hb is None, notes, ap_image_ids)


def predict_dataset(
    predictors: Sequence[PosePredictor],
    data: EvalDataset,
    *,
    on_batch: Callable[[np.ndarray, list[np.ndarray]], None] | None = None,
    progress: Progress | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Keypoints of every person of `data` with each predictor, on identical crops.

    predictors: `PosePredictor`s with the same input size. Images are read once; the people of
    consecutive images are gathered until a predictor batch is full, then every predictor runs
    on the same crops, each normalised with its own engine's mean/std and colour order. on_batch(person indices, [heatmaps (n, J, h, w) per predictor]) sees each
    batch. Returns per predictor (keypoints (N, J, 2) image pixels, maxvals (N, J, 1)).
    """
    if not predictors:
        raise ValueError("no predictor given")
    hw = {tuple(p.meta.input_hw) for p in predictors}
    if len(hw) != 1:
        raise TokenPoseError(f"engines with different input sizes {sorted(hw)} cannot share crops")
    rec = data.records
    n, j = len(rec), predictors[0].config.num_joints
    outputs = [(np.zeros((n, j, 2)), np.zeros((n, j, 1), dtype=np.float32)) for _ in predictors]
    order = sorted(range(n), key=lambda i: rec.image_paths[i])
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault(rec.image_paths[i], []).append(i)
    target = max(p.batch_size for p in predictors)
    paths = list(groups)
    pending_images: list[np.ndarray] = []
    pending_idx: list[np.ndarray] = []
    done = 0

    def flush() -> None:
        idx = np.concatenate(pending_idx)
        which = np.concatenate([np.full(len(k), g) for g, k in enumerate(pending_idx)])
        centers, scales = rec.centers[idx], rec.scales[idx]
        inputs: dict[tuple, np.ndarray] = {}  # one crop batch per distinct normalisation
        maps = []
        for p, (kpts, mv) in zip(predictors, outputs):
            key = (p.meta.mean_rgb, p.meta.std_rgb, p.meta.color_order)
            if key not in inputs:
                inputs[key] = p.crops(pending_images, which, centers, scales)
            hm = p.heatmaps(inputs[key])
            kpts[idx], mv[idx] = p.codec.decode(hm, centers, scales)
            maps.append(hm)
        if on_batch is not None:
            on_batch(idx, maps)
        pending_images.clear()
        pending_idx.clear()

    for path in paths:
        pending_images.append(read_image(path))
        pending_idx.append(np.asarray(groups[path]))
        if sum(len(k) for k in pending_idx) >= target:
            done += len(pending_images)
            flush()
            if progress:
                progress(done, len(paths))
    if pending_idx:
        done += len(pending_images)
        flush()
        if progress:
            progress(done, len(paths))
    return outputs


def _metrics(data: EvalDataset, keypoints: np.ndarray, maxvals: np.ndarray,
             results_path: str | os.PathLike | None = None) -> tuple[dict[str, float], str]:
    rec = data.records
    if data.kind == "coco":
        ev = CocoEvaluator(data.ann_file)
        ev.add(rec.image_ids, keypoints, maxvals, rec.centers, rec.scales, rec.box_scores)
        stats = ev.evaluate(None if data.ap_image_ids is None else data.ap_image_ids.tolist())
        if results_path is not None:
            ev.write_results(results_path)
        return stats, ev.last_summary
    sizes = head_sizes_from_head_segment(rec.joints, rec.joints_vis) if data.head_size_standin else None
    result = pckh(keypoints, rec.joints, rec.joints_vis, headboxes=data.headboxes, head_sizes=sizes)
    return {f"PCKh@0.5 {k}" if k != "Mean@0.1" else "PCKh Mean@0.1": v for k, v in result.summary.items()}, ""


def engine_info(engine: Engine) -> dict[str, Any]:
    m = engine.manifest or {}
    return {"backend": engine.name, "precision": engine.precision, "variant": engine.config.name,
            "artifact": m.get("artifact") or None, "random_weights": bool(m.get("random_weights"))}


@dataclass
class EvalReport:
    """What `evaluate` measured. metrics: COCO AP/AR (0..1) or MPII PCKh (percent)."""

    dataset: str
    engine: dict[str, Any]
    metrics: dict[str, float]
    num_images: int
    num_persons: int
    flip_test: bool
    boxes: str  # "ground truth" or the detection file
    seconds: float
    results_file: str | None = None
    notes: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def main_metric(self) -> tuple[str, float]:
        key = "AP" if self.dataset == "coco" else "PCKh@0.5 Mean"
        return key, self.metrics[key]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("summary")
        return d


def evaluate(
    engine: Engine,
    data: EvalDataset,
    *,
    flip_test: bool = False,
    batch_size: int | None = None,
    results_file: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """COCO keypoint AP (pycocotools, rescoring in_vis_thre 0.2, OKS NMS 0.9) or MPII PCKh of
    `engine` on `data`. results_file: also write the COCO results json there (checked to be
    writable before the engine runs)."""
    _check_dataset(engine, data)
    if results_file is not None:
        if data.kind != "coco":
            raise TokenPoseError("--results writes a COCO results json; MPII evaluation has no such file")
        check_writable(results_file)
    start = time.perf_counter()
    predictor = PosePredictor(engine, flip_test=flip_test, batch_size=batch_size)
    [(kpts, mv)] = predict_dataset([predictor], data, progress=progress)
    metrics, summary = _metrics(data, kpts, mv, results_file)
    return EvalReport(
        dataset=data.kind, engine=engine_info(engine), metrics=metrics, num_images=data.num_images,
        num_persons=len(data.records), flip_test=flip_test,
        boxes=str(data.det_file) if data.det_file else "ground truth", seconds=time.perf_counter() - start,
        results_file=None if results_file is None else str(results_file), notes=list(data.notes), summary=summary,
    )


def _check_dataset(engine: Engine, data: EvalDataset) -> None:
    if engine.config.dataset != data.kind:
        raise TokenPoseError(f"engine {engine.config.name!r} predicts {engine.config.dataset} joints, "
                             f"but the data is {data.kind}")


@dataclass
class ValidationReport:
    """Agreement of a test engine with a reference engine on the same crops.

    heatmap_*: |test - reference| heatmap values; kpt_*_px: distance between the decoded
    keypoints in image pixels, over all joints and over the joints the reference is confident
    about (maxval > 0.2); oks_*: OKS between the two predictions of each person (COCO, all 17
    joints, the crop area); metrics of each engine, and their difference (test - reference).
    """

    test: dict[str, Any]
    reference: dict[str, Any]
    dataset: str
    num_persons: int
    flip_test: bool
    heatmap_max_abs: float
    heatmap_mean_abs: float
    kpt_mean_px: float
    kpt_max_px: float
    kpt_confident_mean_px: float
    kpt_confident_max_px: float
    oks_mean: float | None
    oks_min: float | None
    test_metrics: dict[str, float]
    reference_metrics: dict[str, float]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def metric_delta(self) -> dict[str, float]:
        return {k: self.test_metrics[k] - self.reference_metrics[k] for k in self.test_metrics}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metric_delta"] = self.metric_delta
        return d


def validate(
    engine: Engine,
    reference: Engine,
    data: EvalDataset,
    *,
    flip_test: bool = False,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> ValidationReport:
    """Run `engine` and `reference` on identical crops of `data`; report their agreement and the
    AP / PCKh of each (see `ValidationReport`)."""
    return compare_engines([engine], reference, data, flip_test=flip_test, batch_size=batch_size,
                           progress=progress)[0]


def compare_engines(
    engines: Sequence[Engine],
    reference: Engine,
    data: EvalDataset,
    *,
    flip_test: bool = False,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> list[ValidationReport]:
    """`validate` for several engines against one reference in a single pass over the data: the
    reference runs once, every engine sees the same crops. One report per engine, in order."""
    for e in (*engines, reference):
        _check_dataset(e, data)
        if (e.config.num_joints, tuple(e.config.heatmap_hw)) != \
                (reference.config.num_joints, tuple(reference.config.heatmap_hw)):
            raise TokenPoseError(
                f"the engines predict different heatmaps ({e.config.num_joints}x{e.config.heatmap_hw} vs "
                f"{reference.config.num_joints}x{reference.config.heatmap_hw}): not the same model"
            )
    start = time.perf_counter()
    predictors = [PosePredictor(e, flip_test=flip_test, batch_size=batch_size) for e in (reference, *engines)]
    stats = [{"max": 0.0, "sum": 0.0, "count": 0} for _ in engines]

    def on_batch(idx: np.ndarray, maps: list[np.ndarray]) -> None:
        for st, hm in zip(stats, maps[1:]):
            diff = np.abs(hm - maps[0])
            st["max"] = max(st["max"], float(diff.max()))
            st["sum"] += float(diff.sum(dtype=np.float64))
            st["count"] += diff.size

    (k_ref, mv_ref), *tests = predict_dataset(predictors, data, on_batch=on_batch, progress=progress)
    ref_metrics, _ = _metrics(data, k_ref, mv_ref)
    confident = mv_ref[..., 0] > 0.2
    areas = np.prod(data.records.scales * PIXEL_STD, axis=1)
    reports = []
    for engine, st, (k_test, mv_test) in zip(engines, stats, tests):
        dist = np.linalg.norm(k_test - k_ref, axis=-1)  # (N, J) image pixels
        oks_mean = oks_min = None
        if data.kind == "coco":
            values = oks_pairs(k_test, k_ref, areas)
            oks_mean, oks_min = float(values.mean()), float(values.min())
        test_metrics, _ = _metrics(data, k_test, mv_test)
        reports.append(ValidationReport(
            test=engine_info(engine), reference=engine_info(reference), dataset=data.kind,
            num_persons=len(data.records), flip_test=flip_test,
            heatmap_max_abs=st["max"], heatmap_mean_abs=st["sum"] / max(st["count"], 1),
            kpt_mean_px=float(dist.mean()), kpt_max_px=float(dist.max()),
            kpt_confident_mean_px=float(dist[confident].mean()) if confident.any() else float("nan"),
            kpt_confident_max_px=float(dist[confident].max()) if confident.any() else float("nan"),
            oks_mean=oks_mean, oks_min=oks_min, test_metrics=test_metrics, reference_metrics=ref_metrics,
            seconds=time.perf_counter() - start, notes=list(data.notes),
        ))
    return reports
