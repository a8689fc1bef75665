"""`tokenpose predict` / `tokenpose-predict`: poses on an image, a folder of images or a video.

Person boxes come from `--boxes` (a COCO detection-results json, or {file name: [[x, y, w, h,
score?], ...]}), from the user's ONNX detector (`--detector`, see `tokenpose.predict.detectors`)
or, with neither, from OpenCV's built-in HOG people detector (no download; upright people only, see
`tokenpose.predict.detector`), falling back to the whole image when it finds nobody. Over a video
(or an image sequence), `--track` gives people ids, `--det-every N` detects every N-th frame and
`--smooth` filters each track's keypoints (see `tokenpose.predict.tracking`). Writes the drawn images (or video) and `results.json` (COCO keypoint results) to --out.
The work is done by `tokenpose.predict`; this module only parses options and prints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from tokenpose.cli.common import (
    DeviceOpt,
    EngineOpt,
    EngineVariantOpt,
    FlipOpt,
    PrecisionOpt,
    friendly_errors,
    open_engine,
    progress_bar,
    standalone,
)


DetectorOpt = Annotated[
    Path | None, typer.Option("--detector", help="Person detector ONNX: ultralytics YOLOv8/YOLO11, YOLOX or mmdeploy "
                              "end2end (RTMDet); quality is that of its weights.")]
DetectorFormatOpt = Annotated[
    str | None, typer.Option("--detector-format", help="yolov8, yolox, yolox-raw or mmdeploy (default: from the graph).")]
DetectorSizeOpt = Annotated[
    str | None, typer.Option("--detector-size", help="Detector input, S or WxH px (default: from the graph).")]
DetectorClassOpt = Annotated[int, typer.Option("--detector-class", help="The detector's person class index.")]
DetectorThrOpt = Annotated[float, typer.Option("--detector-thr", help="Lowest detector score kept.")]


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def load_detector_option(detector: Path | None, format: str | None, size: str | None, person_class: int,
                         threshold: float):
    """The `--detector*` options -> an OnnxDetector, or None without --detector (shared with serve)."""
    from tokenpose.errors import TokenPoseError
    from tokenpose.predict.detectors import load_detector

    if detector is None:
        if format is not None or size is not None:
            raise TokenPoseError("--detector-format and --detector-size go with --detector")
        return None
    hw = None
    if size is not None:
        parts = size.lower().split("x")
        if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) > 2:
            raise TokenPoseError(f"--detector-size must be S or WxH pixels, got {size!r}")
        hw = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[1]), int(parts[0]))
    if not 0 <= threshold <= 1:
        raise TokenPoseError(f"--detector-thr must be in [0, 1], got {threshold}")
    return load_detector(detector, format, hw, person_class=person_class, score_threshold=threshold)


@friendly_errors
def command(
    source: Annotated[Path, typer.Argument(help="An image, a folder of images or a video file.")],
    engine: EngineOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (drawn images/video, results.json).")] = Path("predictions"),
    boxes: Annotated[
        Path | None,
        typer.Option("--boxes", help="Person boxes json: COCO detection results or {file name: [[x, y, w, h, score]]}."),
    ] = None,
    box_threshold: Annotated[float, typer.Option("--box-thr", help="Ignore boxes scoring below this.")] = 0.0,
    keypoint_threshold: Annotated[float, typer.Option("--kpt-thr", help="Draw joints scoring at least this.")] = 0.3,
    person_threshold: Annotated[float, typer.Option("--person-thr", help="Draw people scoring at least this.")] = 0.0,
    flip: FlipOpt = False,
    draw: Annotated[bool, typer.Option("--draw/--no-draw", help="Write drawn images / video.")] = True,
    variant: EngineVariantOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "--batch", "-b", help="Crops per engine call (default: engine max or 32).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip the frames already in OUT's results (an interrupted run).")
    ] = False,
    ray: Annotated[bool, typer.Option("--ray", help="Run as a Ray Data job (needs the serve extra).")] = False,
    address: Annotated[
        str | None, typer.Option("--address", help="With --ray: a cluster, auto or ray://HOST:10001 (default: local).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="With --ray: engine actors, each loads the engine once.")] = 1,
    detector: DetectorOpt = None,
    detector_format: DetectorFormatOpt = None,
    detector_size: DetectorSizeOpt = None,
    detector_class: DetectorClassOpt = 0,
    detector_thr: DetectorThrOpt = 0.3,
    track: Annotated[bool, typer.Option("--track", help="Person ids across frames (ByteTrack; the track extra).")] = False,
    det_every: Annotated[
        int, typer.Option("--det-every", help="Detect every N-th frame; between, boxes from the last keypoints.")
    ] = 1,
    smooth: Annotated[bool, typer.Option("--smooth", help="One-Euro filter on each track's keypoints (implies --track).")] = False,
) -> None:
    """Predict poses on an image, a folder or a video; draw skeletons and write COCO results json.

    Without --boxes, people are found by --detector (your ONNX detector) or else OpenCV's built-in
    HOG detector (no download; weak: upright, unoccluded people of at least ~128 px; the whole image
    is used when it finds nobody). Results are saved after every batch: an interrupted run
    continues with --resume.
    """
    from tokenpose.engines.predictor import PosePredictor
    from tokenpose.errors import TokenPoseError
    from tokenpose.predict import BoxSource, PredictJob
    from tokenpose.predict.detector import HOG_NOTICE
    from tokenpose.predict.tracking import TrackOptions

    if batch_size is not None and batch_size < 1:
        raise TokenPoseError(f"--batch-size must be >= 1, got {batch_size}")
    if boxes is not None and detector is not None:
        raise TokenPoseError("--boxes and --detector are two sources of boxes: give one")
    tracking = TrackOptions(track=track or smooth, smooth=smooth, det_every=det_every)
    if ray and tracking.active:
        raise TokenPoseError("--track, --det-every and --smooth follow frames in order: not with --ray")
    box_source = BoxSource(boxes, box_threshold) if boxes is not None else None
    found_by = load_detector_option(detector, detector_format, detector_size, detector_class, detector_thr)
    job = PredictJob(source, out, boxes=box_source, draw=draw, keypoint_threshold=keypoint_threshold,
                     person_threshold=person_threshold, resume=resume, detector=found_by, tracking=tracking)
    if not ray and (address is not None or workers != 1):
        raise TokenPoseError("--address and --workers go with --ray")
    try:
        with progress_bar(f"predict {source.name}", enabled=not source.is_file() or job.is_video) as update:
            if ray:
                summary = _run_on_ray(job, engine, address, workers, batch_size, flip,
                                      {"variant": variant, "device": device, "precision": precision}, update)
            else:
                predictor = PosePredictor(open_engine(engine, variant, device, precision), flip_test=flip,
                                          batch_size=batch_size)
                summary = job.run(predictor, warn=_warn, progress=update)
    except KeyboardInterrupt:
        typer.secho(f"note: results so far are in {out}; run again with --resume to continue", err=True)
        raise
    _report(summary, boxes, out if draw else None, tracking)
    if boxes is None and detector is None:
        typer.secho(f"note: {HOG_NOTICE}", err=True)


def _report(summary, boxes: Path | None, drawings: Path | None, tracking) -> None:
    """The warnings about skipped inputs, then one summary line."""
    for problem in summary.skipped:
        _warn(f"skipped {problem}")
    if summary.no_boxes:
        _warn(f"{summary.no_boxes} image(s) have no box in {boxes}")
    extra = [f"{len(summary.truncated)} truncated"] if summary.truncated else []
    extra += [f"{summary.resumed} resumed"] if summary.resumed else []
    extra += [f"{summary.tracks} tracks"] if tracking.tracking else []
    extra += [f"detector on {summary.detector_frames} frames"] if tracking.det_every > 1 else []
    typer.echo(f"{summary.people} people in {summary.frames} {summary.kind}" + "".join(f" ({e})" for e in extra)
               + f"; results: {summary.results}" + (f"; drawings in {drawings}{os.sep}" if drawings else ""))


def _run_on_ray(job, engine: Path, address: str | None, workers: int, batch_size: int | None, flip: bool,
                load_options: dict, progress):
    from tokenpose.errors import TokenPoseError

    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise TokenPoseError("--ray needs Ray Data: pip install 'tokenpose[serve]'") from None
    from tokenpose.serving.batch_job import RayOptions, run_on_ray

    options = RayOptions(engine=engine, address=address, workers=workers, batch=batch_size or 32, flip=flip,
                         load_options={k: v for k, v in load_options.items() if v is not None})
    return run_on_ray(job, options, warn=_warn, progress=progress)


main = standalone(command)
