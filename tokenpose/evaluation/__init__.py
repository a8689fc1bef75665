"""Evaluation: COCO keypoint AP through pycocotools (rescoring, OKS NMS) and MPII PCKh."""

from tokenpose.evaluation.coco import COCO_STAT_NAMES, CocoEvaluator, rescore
from tokenpose.evaluation.mpii import (
    HEAD_SIZE_FACTOR,
    MEAN_AT_0_1_THRESHOLD,
    PCKhResult,
    head_sizes_from_head_segment,
    pckh,
)
from tokenpose.evaluation.oks import oks, oks_matrix, oks_nms, oks_pairs

__all__ = [
    "COCO_STAT_NAMES",
    "CocoEvaluator",
    "HEAD_SIZE_FACTOR",
    "MEAN_AT_0_1_THRESHOLD",
    "PCKhResult",
    "head_sizes_from_head_segment",
    "oks",
    "oks_matrix",
    "oks_pairs",
    "oks_nms",
    "pckh",
    "rescore",
]
