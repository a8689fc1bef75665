"""`tokenpose eval` / `tokenpose-eval`: COCO keypoint AP or MPII PCKh of any engine file.

Also holds the engine options and the progress bar that `validate` and `predict` share.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tokenpose.cli.common import JsonFlag, friendly_errors, standalone

EngineOpt = Annotated[Path, typer.Option("--engine", "-e", help="Model file: .pth (PyTorch), .onnx or .engine (TensorRT).")]
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


def open_engine(path: Path, variant: str | None = None, device: str | None = None, precision: str | None = None):
    """`load_engine` with only the options the user gave."""
    from tokenpose.engines.base import load_engine

    given = {"variant": variant, "device": device, "precision": precision}
    options = {k: v for k, v in given.items() if v is not None}
    return load_engine(path, **options)


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr; yields `update(done, total)`."""
    if not enabled:
        yield lambda done, total: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _echo_notes(notes: list[str]) -> None:
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)


def _warn_random(engine) -> None:
    if (engine.manifest or {}).get("random_weights"):
        typer.secho(f"warning: {engine.manifest.get('artifact')} holds randomly initialised weights: "
                    "its accuracy means nothing", fg=typer.colors.YELLOW, err=True)


@friendly_errors
def command(
    engine: EngineOpt,
    data_root: DataRootOpt,
    det_file: DetFileOpt = None,
    flip: FlipOpt = False,
    ann_file: AnnFileOpt = None,
    image_dir: ImageDirOpt = None,
    head_boxes: HeadBoxesOpt = None,
    head_size_standin: StandinOpt = False,
    variant: EngineVariantOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: BatchOpt = None,
    max_images: MaxImagesOpt = None,
    results: Annotated[Path | None, typer.Option("--results", help="Write the COCO results json here.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """COCO keypoint AP (pycocotools; rescoring 0.2, OKS NMS 0.9) or MPII PCKh@0.5 of an engine file.

    COCO root: annotations/person_keypoints_val2017.json and images/val2017 (or val2017/, images/).
    MPII root: annot/valid.json, images/ and annot/gt_valid.mat for the head boxes.
    """
    from tokenpose.evaluation.runner import evaluate, open_dataset

    eng = open_engine(engine, variant, device, precision)
    data = open_dataset(data_root, eng.config, ann_file=ann_file, image_dir=image_dir, det_file=det_file,
                        head_boxes=head_boxes, head_size_standin=head_size_standin, max_images=max_images)
    if not as_json:
        _warn_random(eng)
        _echo_notes(data.notes)
    with progress_bar(f"eval {engine.name}", enabled=not as_json) as update:
        report = evaluate(eng, data, flip_test=flip, batch_size=batch_size, results_file=results, progress=update)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title=f"{engine.name}: {report.engine['backend']} {report.engine['precision']}, "
                        f"{report.num_persons} persons in {report.num_images} images, boxes: {report.boxes}"
                        + (", flip test" if flip else ""))
    for key in report.metrics:
        table.add_column(key, justify="right")
    scale = 100.0 if report.dataset == "coco" else 1.0
    table.add_row(*[f"{v * scale:.1f}" if v >= 0 else "-" for v in report.metrics.values()])
    Console(width=max(Console().width, 120)).print(table)
    key, value = report.main_metric
    typer.echo(f"{key} {value * scale:.2f} ({report.seconds:.1f} s)" + (f"; results: {results}" if results else ""))


main = standalone(command)
