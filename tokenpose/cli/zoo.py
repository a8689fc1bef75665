"""`tokenpose zoo`: the variant table with parameters and FLOPs beside the paper's figures."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tokenpose.cli.common import JsonFlag, friendly_errors, standalone
from tokenpose.models.complexity import Complexity, zoo_table
from tokenpose.models.config import get_config


def render_zoo(rows: list[Complexity]) -> Table:
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


@friendly_errors
def command(
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Only these variants.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Print every variant's input size, parameters and GFLOPs beside the paper's figures."""
    names = [get_config(v).name for v in variant] if variant else None
    rows = zoo_table(names)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        console = Console()
        Console(width=max(console.width, 100)).print(render_zoo(rows))


main = standalone(command)
