"""`make demo`: the main job on a fresh machine.

Prints the model-zoo table and runs one S-v2 forward pass.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console

from tokenpose import create_model
from tokenpose.cli.zoo import render_zoo
from tokenpose.models.complexity import zoo_table


def main() -> None:
    console = Console(width=max(Console().width, 100))
    console.print(render_zoo(zoo_table()))
    model = create_model("s-v2")
    console.print("[yellow]S-v2 with randomly initialised weights (no official weights are published).[/]")
    images = torch.randn(2, 3, *model.config.input_hw)
    start = time.perf_counter()
    with torch.no_grad():
        heatmaps = model(images)
    console.print(
        f"forward: images {tuple(images.shape)} -> heatmaps {tuple(heatmaps.shape)} "
        f"in {(time.perf_counter() - start) * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
