"""TrainConfig: every training setting in one dataclass, with the official configs' defaults.

The official yaml files differ only in the model and the per-GPU batch size (reference §6.5):
Adam lr 1e-3 with no weight decay, 300 epochs, MultiStepLR [200, 260] x 0.1 stepped per epoch.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenpose.models.config import ModelConfig, get_config

AMP_MODES = ("off", "fp16", "bf16")

# Official BATCH_SIZE_PER_GPU (each config trains on 4 GPUs, the 384x288 L on 8). Our batch_size
# is per process too, so `torchrun --nproc-per-node 4` with these reproduces the total batch.
DEFAULT_BATCH_SIZE = {
    "t": 32, "s-v1": 32, "s-v2": 12, "b": 32,
    "l-d6": 16, "l-d24": 16, "l-d24-384": 32, "l-d6-mpii": 16,
}


@dataclass
class TrainConfig:
    """Settings of one training run (sizes (H, W), epochs and steps count from 0).

    variant: a variant name or a `ModelConfig` (tests use reduced configs).
    data_root: COCO-style root (`annotations/*.json` + `images/`) or MPII root.
    dataset: "coco", "mpii" or "auto" (the variant's dataset).
    ann_file / image_dir: override the files found under data_root.
    batch_size: per process (per GPU); None picks the official per-GPU batch of the variant.
    weight_decay: 0, as in the official runs (their yaml's WD 1e-4 never reaches Adam).
    amp: "off", "fp16" (autocast + GradScaler, CUDA only) or "bf16" (autocast, no scaler).
    grad_clip: max global gradient norm, None for no clipping (the official code has none).
    checkpoint_every_steps: also write last.pth every N optimizer steps (0: once per epoch).
    resume: a checkpoint path, or True for `<out>/last.pth`.
    hrnet_pretrained: ImageNet HRNet-W32/W48 weights to initialise the B/L backbone.
    augment: the official training augmentation (half body, scale, rotation, flip).
    on_bad: "raise" on missing/unreadable images and unusable annotations, or "skip" them.
    max_images: use only the first N annotated persons (smoke tests, overfitting).
    max_steps: stop after this many optimizer steps in all (None: run all epochs).
    val_ann_file / val_image_dir: a COCO validation set; AP with ground-truth boxes every
        `val_every` epochs, and best.pth keeps the best AP. val_flip_test: average with the
        mirrored input (the official test setting; it hurts a model trained without flips).
    """

    variant: str | ModelConfig = "t"
    data_root: Path | None = None
    dataset: str = "auto"
    ann_file: Path | None = None
    image_dir: Path | None = None
    out: Path = Path("runs/train")
    epochs: int = 300
    batch_size: int | None = None
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = (200, 260)
    gamma: float = 0.1
    amp: str = "off"
    grad_clip: float | None = None
    workers: int = 4
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    resume: Path | bool | None = None
    hrnet_pretrained: Path | None = None
    checkpoint_every_steps: int = 0
    augment: bool = True
    on_bad: str = "raise"
    max_images: int | None = None
    max_steps: int | None = None
    val_ann_file: Path | None = None
    val_image_dir: Path | None = None
    val_every: int = 1
    val_flip_test: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("data_root", "ann_file", "image_dir", "hrnet_pretrained", "val_ann_file", "val_image_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        self.out = Path(self.out)
        if self.resume is not None and not isinstance(self.resume, bool):
            self.resume = Path(self.resume)
        self.milestones = tuple(int(m) for m in self.milestones)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.validate()

    @property
    def model_config(self) -> ModelConfig:
        return get_config(self.variant)

    @property
    def variant_name(self) -> str:
        return self.model_config.name

    @property
    def dataset_name(self) -> str:
        return self.model_config.dataset if self.dataset == "auto" else self.dataset

    @property
    def per_process_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return DEFAULT_BATCH_SIZE.get(self.variant_name, 32)

    @property
    def resume_path(self) -> Path | None:
        if self.resume is True:
            return self.out / "last.pth"
        return self.resume or None

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        get_config(self.variant)  # unknown variant -> ValueError listing the valid ones
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.on_bad not in ("raise", "skip"):
            raise ValueError(f"on_bad must be 'raise' or 'skip', got {self.on_bad!r}")
        if self.dataset not in ("auto", "coco", "mpii"):
            raise ValueError(f"dataset must be 'auto', 'coco' or 'mpii', got {self.dataset!r}")
        if self.dataset_name != self.model_config.dataset:
            raise ValueError(
                f"variant {self.variant_name!r} predicts {self.model_config.dataset} joints, "
                f"it cannot train on {self.dataset_name}"
            )
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size is None or self.batch_size >= 1,
            "lr": self.lr > 0,
            "gamma": self.gamma > 0,
            "workers": self.workers >= 0,
            "checkpoint_every_steps": self.checkpoint_every_steps >= 0,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "max_images": self.max_images is None or self.max_images >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "val_every": self.val_every >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")
        if self.val_ann_file is not None and self.dataset_name != "coco":
            raise ValueError("validation during training supports COCO only (use `tokenpose eval` for MPII PCKh)")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {list(self.milestones)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (str/int/float/bool/None/list/dict), so `torch.load(weights_only=True)`
        and json can hold it. A `ModelConfig` variant becomes a dict of its fields."""

        def plain(v: Any) -> Any:
            if isinstance(v, os.PathLike):
                return str(v)
            if isinstance(v, ModelConfig):
                return {"model_config": v.to_dict()}
            if isinstance(v, dict):
                return {str(k): plain(x) for k, x in v.items()}
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict` (unknown keys are an error)."""
        d = dict(d)
        variant = d.get("variant")
        if isinstance(variant, dict) and "model_config" in variant:
            d["variant"] = ModelConfig.from_dict(variant["model_config"])
        for k in ("betas", "milestones"):
            if k in d:
                d[k] = tuple(d[k])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**d)
