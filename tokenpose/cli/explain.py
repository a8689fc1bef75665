"""`tokenpose explain`: attention maps and learned keypoint constraints of one person (paper §4).

The model and the figures (torch, OpenCV, matplotlib) are imported when the command runs, so that
`tokenpose --help` stays light.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from tokenpose.cli.common import OutOpt, fail, friendly_errors, standalone
from tokenpose.files import check_writable

if TYPE_CHECKING:
    from tokenpose.models import TokenPose


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """"x,y,w,h" in pixels -> 4 floats; None passes through. ValueError with the text otherwise."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"--box must be four numbers x,y,w,h in pixels, got {text!r}")
    return values  # type: ignore[return-value]


def load_model(checkpoint: Path, variant: str | None) -> TokenPose:
    """The model of `checkpoint`, in eval mode.

    The architecture is `variant` when given, else what the checkpoint records (a variant name,
    or the `model_config` of a training checkpoint such as the overfit benchmark's `t-mini`), else
    the variant whose key shapes it matches exactly, the same rule as the PyTorch engine.
    """
    from tokenpose.engines.torch_engine import checkpoint_config
    from tokenpose.models import VARIANTS, TokenPose, get_config
    from tokenpose.models.checkpoints import load_official_state_dict, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{checkpoint}: not a checkpoint dict")
    config = get_config(variant) if variant in VARIANTS else checkpoint_config(ckpt, source=str(checkpoint))
    if variant is not None and config.name != variant:
        raise ValueError(f"{checkpoint} holds variant {config.name!r}, not {variant!r}")
    model = TokenPose(config)
    load_official_state_dict(model, ckpt, source=str(checkpoint))
    return model.eval()


def render_constraints(constraints: list[dict], layer: str) -> Table:
    table = Table(title=f"Top-2 constraints per keypoint ({layer}, attention score)")
    for name in ("keypoint", "top-1", "top-2"):
        table.add_column(name, no_wrap=True)
    for entry in constraints:
        table.add_row(
            entry["keypoint"],
            *(f"{c['keypoint']} ({c['score']:.4f})" for c in entry["constraints"]),
        )
    return table


@friendly_errors
def command(
    image: Annotated[Path, typer.Argument(help="Image file (any format OpenCV reads).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Official-layout .pth checkpoint.")],
    variant: Annotated[
        str | None,
        typer.Option("--variant", "-v", help="Model variant (see `tokenpose zoo`); default: the "
                     "architecture a training checkpoint records."),
    ] = None,
    box: Annotated[
        str | None,
        typer.Option("--box", "-b", help="Person box x,y,w,h in pixels; default: the whole image."),
    ] = None,
    keypoints: Annotated[
        str | None,
        typer.Option("--keypoints", "-k", help="Rows of the visual-attention figure: names or indices, "
                     "comma-separated, or 'all'; default: nose, elbows, wrists, ankles."),
    ] = None,
    out: OutOpt = Path("explain_out"),
) -> None:
    """Draw keypoint-to-visual and keypoint-to-keypoint attention per layer, the learned token
    similarity and the top-2 constraints per keypoint (paper Figures 3-5, Table 8)."""
    from tokenpose.data.transforms import ImageReadError, read_image
    from tokenpose.explain import explain_image, resolve_keypoints, write_explanation
    from tokenpose.explain.attention import check_box

    person_box = parse_box(box)
    check_writable(out, folder=True)  # before the model is built and run, not after
    try:
        picture = read_image(image)
    except ImageReadError as exc:
        raise fail(str(exc)) from None
    if person_box is None:
        typer.echo("no --box given: explaining the whole image as one person crop", err=True)
    else:
        check_box(person_box, picture.shape[:2])  # fail before building the model
    model = load_model(checkpoint, variant)
    rows = resolve_keypoints(keypoints, model.config)
    expl = explain_image(model, picture, person_box)
    paths = write_explanation(expl, out, rows)
    Console(width=100).print(render_constraints(expl.constraints, expl.layer_labels[-1]))
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


main = standalone(command)
