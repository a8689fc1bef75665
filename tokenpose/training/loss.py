"""The training criterion: JointsMSELoss, the official heatmap loss (reference §6.4)."""

from __future__ import annotations

import torch
from torch import nn


class JointsMSELoss(nn.Module):
    """0.5 * mean over (batch, joint, pixel) of (w_bj * (pred - target))^2.

    The official code loops over joints, takes 0.5 * MSE(mean) of each weighted map and averages
    over joints; with equal-sized maps that is the single mean computed here. OHKM and per-joint
    weights are off in every official config, so they are not offered.

    forward(output (B, J, h, w), target (B, J, h, w), target_weight (B, J, 1) or (B, J)) -> scalar.
    The loss is computed in float32 even when `output` is float16/bfloat16 (under autocast).
    """

    def __init__(self, use_target_weight: bool = True) -> None:
        super().__init__()
        self.use_target_weight = use_target_weight

    def forward(self, output: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor | None = None) -> torch.Tensor:
        if output.shape != target.shape or output.dim() < 3:
            raise ValueError(
                f"output and target must both be (B, J, h, w); got {tuple(output.shape)} and {tuple(target.shape)}"
            )
        b, j = output.shape[:2]
        diff = (output.float() - target.float()).reshape(b, j, -1)  # (B, J, h*w)
        if self.use_target_weight:
            if target_weight is None:
                raise ValueError("use_target_weight=True needs target_weight (B, J, 1)")
            if target_weight.numel() != b * j:
                raise ValueError(f"target_weight must be (B, J, 1) = ({b}, {j}, 1), got {tuple(target_weight.shape)}")
            diff = diff * target_weight.float().reshape(b, j, 1)
        return 0.5 * diff.pow(2).mean()
