"""What the CLI modules share: option aliases, opening engines and data sets, progress bars,
tables, one-line errors.

Only typer, rich and the torch-free corner of the library (errors, progress) are imported here at
module level: every command module imports this one, and `tokenpose --help` imports them all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console, RenderableType

from tokenpose.errors import TokenPoseError
from tokenpose.progress import make_progress

F = TypeVar("F", bound=Callable)
R = TypeVar("R")

VariantOpt = Annotated[str, typer.Option("--variant", "-v", help="Model variant (see `tokenpose zoo`).")]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", "-c", help="Official-layout .pth checkpoint.")
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# Options of the commands that run an engine file (eval, validate, predict).
EngineOpt = Annotated[Path, typer.Option("--engine", "-e", help="Model file: .pth (PyTorch), .onnx, .engine (TensorRT) or .pt2 (AOTInductor).")]
DataRootOpt = Annotated[Path, typer.Option("--data-root", "-d", help="COCO or MPII root (see `tokenpose eval --help`).")]
EngineVariantOpt = Annotated[
    str | None, typer.Option("--variant", "-v", help="Variant of a .pth without variant metadata.")
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="auto, cpu, cuda[:N] (PyTorch), cuda or tensorrt (ONNX Runtime EP)."),
]
PrecisionOpt = Annotated[
    str | None, typer.Option("--precision", help="PyTorch autocast: fp32, fp16 or bf16 (.pth only).")
]
FlipOpt = Annotated[bool, typer.Option("--flip/--no-flip", help="Official flip test (mirror crops, average).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help="Crops per engine call (default: engine max or 32).")]
DetFileOpt = Annotated[
    Path | None, typer.Option("--det-file", help="COCO person-detection results json (default: ground-truth boxes).")
]
AnnFileOpt = Annotated[Path | None, typer.Option("--ann-file", help="Annotation json (default: found under the root).")]
ImageDirOpt = Annotated[Path | None, typer.Option("--image-dir", help="Image folder (default: found under the root).")]
HeadBoxesOpt = Annotated[
    Path | None, typer.Option("--head-boxes", help="MPII head boxes: gt_valid.mat, .npy or .json (N, 2, 2).")
]
StandinOpt = Annotated[
    bool,
    typer.Option("--head-size-standin", help="MPII without head boxes: use the head segment (not comparable)."),
]
MaxImagesOpt = Annotated[int | None, typer.Option("--max-images", help="Only the first N images (quick check).")]
OnBadOpt = Annotated[
    Literal["raise", "skip"],
    typer.Option("--on-bad", help="Stop at unusable images, annotations or detections (raise), or drop them (skip)."),
]


def open_engine(path: Path, variant: str | None = None, device: str | None = None, precision: str | None = None):
    """`load_engine` with only the options the user gave."""
    from tokenpose.engines.base import load_engine

    given = {"variant": variant, "device": device, "precision": precision}
    options = {k: v for k, v in given.items() if v is not None}
    return load_engine(path, **options)


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields `update(done, total)`."""
    with make_progress(enabled=enabled) as bar:
        if bar is None:
            yield lambda done, total: None
            return
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def run_over_dataset(
    description: str,
    config: Any,
    run: Callable[[Any, Callable[[int, int], None]], R],
    *,
    quiet: bool = False,
    **dataset_options: Any,
) -> R:
    """The flow of `eval` and `validate`: open the evaluation set of `config` (ModelConfig) with
    `dataset_options` (those of `evaluation.runner.open_dataset`), print its notes, then
    `run(data, update)` under a progress bar. `quiet` (--json) prints neither notes nor bar."""
    from tokenpose.evaluation.runner import open_dataset

    data = open_dataset(config=config, **dataset_options)
    if not quiet:
        echo_notes(data.notes)
    with progress_bar(description, enabled=not quiet) as update:
        return run(data, update)


def echo_json(obj: Any) -> None:
    """`obj` as indented JSON on stdout."""
    typer.echo(json.dumps(obj, indent=2))


def print_wide(renderable: RenderableType, min_width: int) -> None:
    """Print a rich table at least `min_width` columns wide (narrow terminals and pipes included)."""
    Console(width=max(Console().width, min_width)).print(renderable)


def fail(message: str) -> typer.Exit:
    """Print `message` as one line on stderr; return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def echo_notes(notes: list[str]) -> None:
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Library warnings print as one `warning: ...` line on stderr, not in Python's
    `file:line: Category: ...` form with a source line under it."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def warn_random_weights(engine) -> None:
    if (engine.manifest or {}).get("random_weights"):
        typer.secho(f"warning: {engine.manifest.get('artifact')} holds randomly initialised weights: "
                    "its accuracy means nothing", fg=typer.colors.YELLOW, err=True)


def friendly_errors(func: F) -> F:
    """Known errors (ours, bad values, missing files) become one line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (TokenPoseError, ValueError, FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def standalone(command: Callable) -> Callable[[], None]:
    """A console-script entry point (e.g. `tokenpose-export`) running one command on its own."""

    def main() -> None:
        app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        app.command()(command)
        app()

    return main
