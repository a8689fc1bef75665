"""Parameter and FLOP counts per variant: the paper's convention and the true cost.

The paper's "GFLOPs" come from the official summary tool, which counts, for one image,
Σ_conv weight.numel()·H_out·W_out + Σ_linear output.numel()·input.shape[1], divided by 2**30.
For token inputs `(B, N, d_in)` that `input.shape[1]` is the token count N, not d_in, and the
attention matmuls are not counted at all, so the figure is neither MACs nor FLOPs. We reproduce
it to compare with the paper, and report the true FLOPs (2 x MACs, attention included) beside it
for budgeting. Both count the official network (`TokenPose.reference_form`); `executed_gflops` is
what our default forward computes (the last layer's visual-token rows are not, see
`TokenPose.forward`), the work behind a benchmark's GFLOP/s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tokenpose.models.config import ModelConfig, get_config, list_variants
from tokenpose.models.tokenpose import TokenPose


@dataclass(frozen=True)
class Complexity:
    variant: str
    input_hw: tuple[int, int]
    heatmap_hw: tuple[int, int]
    params: int  # trainable parameters (the fixed sine table excluded, as in the paper)
    paper_params_m: float | None
    gflops_paper_convention: float  # the official summary tool's count, in GiB units
    paper_gflops: float | None
    true_gflops: float  # 2 x MACs per image, attention matmuls included, 1e9 units
    true_gflops_attention: float  # of which the QK^T and AV matmuls
    executed_gflops: float  # 2 x MACs our forward computes per image (pruned last layer)

    def as_dict(self) -> dict:
        return asdict(self)


def _paper_convention_hooks(model: nn.Module, total: list[float]) -> list:
    def conv_hook(module: nn.Conv2d, inputs, output) -> None:
        total[0] += module.weight.numel() * output.shape[2] * output.shape[3]

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        total[0] += output.numel() * inputs[0].shape[1]

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    return handles


def _count(model: TokenPose, images: torch.Tensor, paper: bool) -> tuple[float, float, float]:
    """(paper-convention count, total FLOPs, attention FLOPs) of one forward pass."""
    paper_total = [0.0]
    handles = _paper_convention_hooks(model, paper_total) if paper else []
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(images)
    finally:
        for h in handles:
            h.remove()
    attention = sum(
        count for name, count in counter.get_flop_counts().get("Global", {}).items() if "bmm" in str(name)
    )
    return paper_total[0], counter.get_total_flops(), attention


def measure(variant: str | ModelConfig) -> Complexity:
    """Count parameters and FLOPs of one variant for a single image (runs on the meta device)."""
    cfg = get_config(variant)
    with torch.device("meta"):
        model = TokenPose(cfg).eval()
        images = torch.empty(1, 3, *cfg.input_hw)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.reference_form = True
    paper, total, attention = _count(model, images, paper=True)
    model.reference_form = False
    executed = _count(model, images, paper=False)[1]
    return Complexity(
        variant=cfg.name,
        input_hw=cfg.input_hw,
        heatmap_hw=cfg.heatmap_hw,
        params=params,
        paper_params_m=cfg.paper_params_m,
        gflops_paper_convention=paper / 2**30,
        paper_gflops=cfg.paper_gflops,
        true_gflops=total / 1e9,
        true_gflops_attention=attention / 1e9,
        executed_gflops=executed / 1e9,
    )


def zoo_table(variants: list[str] | None = None) -> list[Complexity]:
    """Complexity of every variant (or the given ones), in the paper's order."""
    return [measure(v) for v in (variants or list_variants())]
