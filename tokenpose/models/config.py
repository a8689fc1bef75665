"""The variant table: every TokenPose variant is one frozen `ModelConfig`.

Every switch the official code hides behind class choice or yaml becomes a named field here,
so a variant is fully described by one row and nothing else decides the architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from tokenpose.keypoints import (
    COCO_FLIP_PAIRS,
    COCO_KEYPOINTS,
    MPII_FLIP_PAIRS,
    MPII_KEYPOINTS,
)

BACKBONES = ("pixels", "stem", "hrnet_w32", "hrnet_w48")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one TokenPose variant. Sizes are (H, W) everywhere."""

    name: str
    backbone: str  # "pixels" (T), "stem" (S), "hrnet_w32" (B), "hrnet_w48" (L)
    input_hw: tuple[int, int]
    heatmap_hw: tuple[int, int]
    patch_hw: tuple[int, int]  # patch size on the backbone's feature map (on pixels for T)
    heads: int
    depth: int  # layers per encoder group
    encoder_groups: int = 1  # L runs three encoders in sequence and fuses their keypoint tokens
    dim: int = 192
    mlp_hidden: int = 576
    # The S variants scale attention logits by dim**-0.5 instead of head_dim**-0.5: a flag the
    # official S base class leaves at its default. Reproduced because checkpoints depend on it.
    attn_scale_by_dim: bool = False
    # T/S/B head: LN(dim) -> Linear(dim, head_hidden) -> LN -> Linear(head_hidden, H*W), no activation.
    # L head (head_hidden None): LN(groups*dim) -> Linear(groups*dim, H*W).
    head_hidden: int | None = 384
    dataset: str = "coco"  # "coco" (17 joints) or "mpii" (16 joints)
    sigma: float = 2.0  # Gaussian sigma of the training targets, in heatmap pixels
    paper_params_m: float | None = None  # the paper's parameter count, millions
    paper_gflops: float | None = None  # the paper's GFLOPs (the official summary tool's convention)
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.dataset not in ("coco", "mpii"):
            raise ValueError(f"dataset must be 'coco' or 'mpii', got {self.dataset!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        fh, fw = self.feature_hw
        ph, pw = self.patch_hw
        if fh % ph or fw % pw:
            raise ValueError(f"feature map {self.feature_hw} is not divisible by patch {self.patch_hw}")

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain type (tuples become lists), for json and weights-only checkpoints."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of `to_dict` (lists become tuples). ValueError naming unknown or missing fields."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        missing = [n for n, f in known.items()
                   if n not in d and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"ModelConfig field(s) missing: {', '.join(missing)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def num_joints(self) -> int:
        return len(self.keypoint_names)

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return COCO_KEYPOINTS if self.dataset == "coco" else MPII_KEYPOINTS

    @property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        return COCO_FLIP_PAIRS if self.dataset == "coco" else MPII_FLIP_PAIRS

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def attn_scale(self) -> float:
        return (self.dim if self.attn_scale_by_dim else self.head_dim) ** -0.5

    @property
    def total_layers(self) -> int:
        return self.depth * self.encoder_groups

    @property
    def feature_channels(self) -> int:
        return {"pixels": 3, "stem": 256, "hrnet_w32": 32, "hrnet_w48": 48}[self.backbone]

    @property
    def feature_hw(self) -> tuple[int, int]:
        """Size of the map patches are cut from: the image for T, 1/4 of it otherwise."""
        h, w = self.input_hw
        return (h, w) if self.backbone == "pixels" else (h // 4, w // 4)

    @property
    def token_grid_hw(self) -> tuple[int, int]:
        (fh, fw), (ph, pw) = self.feature_hw, self.patch_hw
        return fh // ph, fw // pw

    @property
    def num_visual_tokens(self) -> int:
        gh, gw = self.token_grid_hw
        return gh * gw

    @property
    def patch_dim(self) -> int:
        ph, pw = self.patch_hw
        return ph * pw * self.feature_channels

    @property
    def aspect_ratio(self) -> float:
        """Model input width / height, used to pad boxes before cropping."""
        return self.input_hw[1] / self.input_hw[0]


_COCO = dict(input_hw=(256, 192), heatmap_hw=(64, 48))

VARIANTS: dict[str, ModelConfig] = {
    cfg.name: cfg
    for cfg in (
        ModelConfig("t", "pixels", patch_hw=(16, 12), heads=16, depth=12, **_COCO,
                    paper_params_m=5.8, paper_gflops=1.3,
                    description="TokenPose-T: pure transformer on 16x12 pixel patches"),
        ModelConfig("s-v1", "stem", patch_hw=(4, 3), heads=8, depth=12, attn_scale_by_dim=True, **_COCO,
                    paper_params_m=6.6, paper_gflops=2.2,
                    description="TokenPose-S-v1: conv stem, 4x3 patches, 256 tokens"),
        ModelConfig("s-v2", "stem", patch_hw=(2, 2), heads=8, depth=12, attn_scale_by_dim=True, **_COCO,
                    paper_params_m=6.2, paper_gflops=11.6,
                    description="TokenPose-S-v2: conv stem, 2x2 patches, 768 tokens"),
        ModelConfig("b", "hrnet_w32", patch_hw=(4, 3), heads=8, depth=12, **_COCO,
                    paper_params_m=13.5, paper_gflops=5.7,
                    description="TokenPose-B: HRNet-W32 stages 1-3, 12 layers"),
        ModelConfig("l-d6", "hrnet_w48", patch_hw=(4, 3), heads=12, depth=2, encoder_groups=3,
                    head_hidden=None, **_COCO, paper_params_m=20.8, paper_gflops=9.1,
                    description="TokenPose-L/D6: HRNet-W48 stages 1-3, three encoders of 2 layers"),
        ModelConfig("l-d24", "hrnet_w48", patch_hw=(4, 3), heads=12, depth=8, encoder_groups=3,
                    head_hidden=None, **_COCO, paper_params_m=27.5, paper_gflops=11.0,
                    description="TokenPose-L/D24: HRNet-W48 stages 1-3, three encoders of 8 layers"),
        ModelConfig("l-d24-384", "hrnet_w48", input_hw=(384, 288), heatmap_hw=(96, 72), patch_hw=(6, 4),
                    heads=12, depth=8, encoder_groups=3, head_hidden=None, sigma=3.0,
                    paper_params_m=29.8, paper_gflops=22.1,
                    description="TokenPose-L/D24 at 384x288"),
        ModelConfig("l-d6-mpii", "hrnet_w48", input_hw=(256, 256), heatmap_hw=(64, 64), patch_hw=(4, 4),
                    heads=8, depth=2, encoder_groups=3, head_hidden=None, dataset="mpii",
                    paper_params_m=21.4, paper_gflops=None,
                    description="TokenPose-L/D6 for MPII (16 joints, 256x256)"),
    )
}


def list_variants() -> list[str]:
    """Names of all variants, in the paper's order."""
    return list(VARIANTS)


def get_config(variant: str | ModelConfig) -> ModelConfig:
    """The config of `variant`; a clear error listing the valid names when it is unknown."""
    if isinstance(variant, ModelConfig):
        return variant
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(
            f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}"
        ) from None
