"""`tokenpose validate`: how far one engine (say an INT8 TensorRT engine) is from a reference one."""

from __future__ import annotations

import json
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
    StandinOpt,
    echo_json,
    friendly_errors,
    open_engine,
    print_wide,
    run_over_dataset,
    standalone,
)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@friendly_errors
def command(
    engine: EngineOpt,
    against: Annotated[Path, typer.Option("--against", "-a", help="Reference model file (usually the .pth or FP32 .onnx).")],
    data_root: DataRootOpt,
    det_file: DetFileOpt = None,
    flip: FlipOpt = False,
    ann_file: AnnFileOpt = None,
    image_dir: ImageDirOpt = None,
    head_boxes: HeadBoxesOpt = None,
    head_size_standin: StandinOpt = False,
    variant: EngineVariantOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    max_images: MaxImagesOpt = None,
    on_bad: OnBadOpt = "raise",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the report as JSON here.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Parity report of ENGINE against a reference on the same crops: max heatmap error, keypoint
    error in pixels, OKS between the two, and the AP (or PCKh) of each."""
    from tokenpose.evaluation.runner import validate
    from tokenpose.files import atomic_write, check_writable

    if out is not None:
        check_writable(out)
    test = open_engine(engine, variant, device)
    reference = open_engine(against, variant, device if against.suffix != ".engine" else None)
    report = run_over_dataset(
        f"validate {engine.name}", reference.config,
        lambda data, update: validate(test, reference, data, flip_test=flip, batch_size=batch_size, progress=update),
        quiet=as_json, data_root=data_root, ann_file=ann_file, image_dir=image_dir, det_file=det_file,
        head_boxes=head_boxes, head_size_standin=head_size_standin, max_images=max_images, on_bad=on_bad,
    )
    if out is not None:
        with atomic_write(out, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    if as_json:
        echo_json(report.to_dict())
        return
    coco = report.dataset == "coco"
    scale = 100.0 if coco else 1.0
    table = Table(title=f"{engine.name} vs {against.name}: {report.num_persons} persons"
                        + (", flip test" if flip else ""))
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("max |heatmap diff|", f"{report.heatmap_max_abs:.3e}"),
        ("mean |heatmap diff|", f"{report.heatmap_mean_abs:.3e}"),
        ("keypoint error, mean / max (px)", f"{report.kpt_mean_px:.4f} / {report.kpt_max_px:.4f}"),
        ("  joints with ref score > 0.2", f"{report.kpt_confident_mean_px:.4f} / {report.kpt_confident_max_px:.4f}"),
        ("OKS between the two, mean / min", f"{_fmt(report.oks_mean, '.4f')} / {_fmt(report.oks_min, '.4f')}"),
    ]
    key = "AP" if coco else "PCKh@0.5 Mean"
    for k in ([key, "AP50", "AP75"] if coco else [key]):
        t, r = report.test_metrics[k], report.reference_metrics[k]
        rows.append((f"{k}: {engine.name} / {against.name} (diff)", f"{t * scale:.2f} / {r * scale:.2f} ({(t - r) * scale:+.2f})"))
    for name, value in rows:
        table.add_row(name, value)
    print_wide(table, min_width=100)


main = standalone(command)
