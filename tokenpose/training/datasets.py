"""The training and validation sets of a `TrainConfig`, and the COCO AP of a model in training."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tokenpose.data.coco import CocoKeypoints
from tokenpose.data.heatmaps import HeatmapCodec
from tokenpose.data.mpii import MpiiKeypoints
from tokenpose.data.roots import resolve_data_files
from tokenpose.data.transforms import flip_test_average
from tokenpose.errors import TokenPoseError
from tokenpose.evaluation.coco import CocoEvaluator
from tokenpose.models.checkpoints import bare_model
from tokenpose.training.config import TrainConfig


def build_train_dataset(cfg: TrainConfig) -> Dataset:
    """The training dataset of `cfg` (augmented unless cfg.augment is False), cut to max_images."""
    mc = cfg.model_config
    ann, images = resolve_data_files(cfg.dataset_name, cfg.data_root, cfg.ann_file, cfg.image_dir, "train")
    dataset_class = CocoKeypoints if cfg.dataset_name == "coco" else MpiiKeypoints
    ds = dataset_class.from_config(mc, ann, images, train=cfg.augment, seed=cfg.seed, on_bad=cfg.on_bad)
    if len(ds) == 0:
        raise TokenPoseError(f"the training set {ann} holds no usable person")
    if cfg.max_images is not None and cfg.max_images < len(ds):
        ds = Subset(ds, range(cfg.max_images))
    return ds


def base_dataset(ds: Dataset) -> Dataset:
    """The dataset under any `Subset` wrappers."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def build_val_dataset(cfg: TrainConfig) -> Dataset | None:
    """The COCO validation set (ground-truth boxes, no augmentation), or None.
    (`TrainConfig.validate` rejects a validation set for MPII.)"""
    if cfg.val_ann_file is None:
        return None
    # Without --val-image-dir, look for the images beside the json as in a COCO root
    # (<root>/annotations/x.json -> <root>/images/<split>, <root>/<split> or <root>/images).
    ann, images = resolve_data_files("coco", cfg.val_ann_file.parent.parent, cfg.val_ann_file, cfg.val_image_dir,
                                     "val")
    return CocoKeypoints.from_config(cfg.model_config, ann, images, train=False, on_bad=cfg.on_bad)


@torch.no_grad()
def evaluate_coco(model: nn.Module, dataset: Dataset, *, device: torch.device | str = "cpu",
                  batch_size: int = 32, flip_test: bool = True, workers: int = 0) -> dict[str, float]:
    """COCO keypoint AP of `model` on a (non-augmented) COCO dataset's boxes.

    Heatmaps (B, J, h, w) (flip-test averaged when `flip_test`) are decoded with the codec
    (argmax + DARK) back to image pixels and scored by `CocoEvaluator` (rescoring, OKS NMS).
    Returns the 10 COCO stats (AP, AP50, ..., ARl) in [0, 1].
    """
    model = bare_model(model)
    was_training = model.training
    model.eval()
    cfg = model.config
    base = base_dataset(dataset)
    codec = HeatmapCodec.from_config(cfg)
    evaluator = CocoEvaluator(base.ann_file)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    try:
        for batch in loader:
            images = batch["image"].to(device)
            heatmaps = model(images).float()  # (B, J, h, w)
            if flip_test:
                heatmaps = flip_test_average(heatmaps, model(images.flip(-1)).float(), cfg.flip_pairs)
            centers, scales = batch["center"].numpy(), batch["scale"].numpy()
            keypoints, maxvals = codec.decode(heatmaps, centers, scales)
            evaluator.add(batch["image_id"].numpy(), keypoints, maxvals, centers, scales,
                          batch["box_score"].numpy())
    finally:
        model.train(was_training)
    return evaluator.evaluate()
