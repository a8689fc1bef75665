"""`tokenpose eval` / `tokenpose-eval`: COCO keypoint AP or MPII PCKh of any engine file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tokenpose.cli.common import (
    AnnFileOpt,
    BatchOpt,
    DataRootOpt,
    DetFileOpt,
    DeviceOpt,
    EngineOpt,
    EngineVariantOpt,
    FlipOpt,
    HeadBoxesOpt,
    ImageDirOpt,
    JsonFlag,
    MaxImagesOpt,
    OnBadOpt,
    PrecisionOpt,
    StandinOpt,
    echo_json,
    friendly_errors,
    open_engine,
    print_wide,
    run_over_dataset,
    standalone,
    warn_random_weights,
)


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
    on_bad: OnBadOpt = "raise",
    results: Annotated[Path | None, typer.Option("--results", help="Write the COCO results json here.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """COCO keypoint AP (pycocotools; rescoring 0.2, OKS NMS 0.9) or MPII PCKh@0.5 of an engine file.

    COCO root: annotations/person_keypoints_val2017.json and images/val2017 (or val2017/, images/).
    MPII root: annot/valid.json, images/ and annot/gt_valid.mat for the head boxes.
    """
    from tokenpose.evaluation.runner import evaluate
    from tokenpose.files import check_writable

    if results is not None:  # before the engine and the data are opened (evaluate checks it again)
        check_writable(results)
    eng = open_engine(engine, variant, device, precision)
    if not as_json:
        warn_random_weights(eng)
    report = run_over_dataset(
        f"eval {engine.name}", eng.config,
        lambda data, update: evaluate(eng, data, flip_test=flip, batch_size=batch_size, results_file=results,
                                      progress=update),
        quiet=as_json, data_root=data_root, ann_file=ann_file, image_dir=image_dir, det_file=det_file,
        head_boxes=head_boxes, head_size_standin=head_size_standin, max_images=max_images, on_bad=on_bad,
    )
    if as_json:
        echo_json(report.to_dict())
        return
    table = Table(title=f"{engine.name}: {report.engine['backend']} {report.engine['precision']}, "
                        f"{report.num_persons} persons in {report.num_images} images, boxes: {report.boxes}"
                        + (", flip test" if flip else ""))
    for key in report.metrics:
        table.add_column(key, justify="right")
    scale = 100.0 if report.dataset == "coco" else 1.0
    table.add_row(*[f"{v * scale:.1f}" if v >= 0 else "-" for v in report.metrics.values()])
    print_wide(table, min_width=120)
    key, value = report.main_metric
    typer.echo(f"{key} {value * scale:.2f} ({report.seconds:.1f} s)" + (f"; results: {results}" if results else ""))


main = standalone(command)
