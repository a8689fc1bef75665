"""The model-zoo table (`tokenpose zoo`, `make demo`): each variant's size and cost beside the paper's."""

from __future__ import annotations

from rich.table import Table

from tokenpose.models.complexity import Complexity


def render_zoo(rows: list[Complexity]) -> Table:
    """A rich table of `zoo_table()` rows: input and heatmap size (H x W), parameters in millions,
    GFLOPs in the paper's convention and true GFLOPs, each beside the paper's figure."""
    table = Table(title="TokenPose model zoo (per image, batch 1)")
    table.add_column("variant", no_wrap=True)
    for name in ("input", "heatmap", "params", "paper", "GFLOPs*", "paper", "true GFLOPs"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            r.variant,
            "x".join(map(str, r.input_hw)),
            "x".join(map(str, r.heatmap_hw)),
            f"{r.params / 1e6:.3f}M",
            f"{r.paper_params_m}M" if r.paper_params_m else "-",
            f"{r.gflops_paper_convention:.3f}",
            f"{r.paper_gflops}" if r.paper_gflops else "-",
            f"{r.true_gflops:.2f}",
        )
    table.caption = (
        "GFLOPs* = the paper's convention, the official summary tool's count (Linear counted per token, attention "
        "matmuls left out, /2^30); true GFLOPs = 2 x MACs incl. attention."
    )
    return table
