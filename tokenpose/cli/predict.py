"""`tokenpose predict` / `tokenpose-predict`: poses on an image, a folder of images or a video.

Person boxes come from `--boxes` (a COCO detection-results json, or {file name: [[x, y, w, h,
score?], ...]}) or, without it, from OpenCV's built-in HOG people detector (no download; upright
people only, see `tokenpose.predict.detector`), falling back to the whole image when it finds
nobody. Writes the drawn images (or video) and `results.json` (COCO keypoint results) to --out.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
import typer

from tokenpose.cli.common import (
    BatchOpt,
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
from tokenpose.data.transforms import ImageReadError, read_image
from tokenpose.errors import TokenPoseError
from tokenpose.files import atomic_write

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def image_id_for(name: str, index: int) -> int:
    """COCO-style numeric file names keep their number as image id; other files get their index."""
    stem = Path(name).stem
    return int(stem) if stem.isdigit() else index


def numeric_id(name: str) -> int | None:
    """The number a COCO-style file name carries (`000000000785.jpg` -> 785), else None."""
    stem = Path(name).stem
    return int(stem) if stem.isdigit() else None


class BoxSource:
    """Person boxes per image from a json file: COCO detection results or a {file name: [[x, y, w,
    h, score?]]} dict.

    A detection with a `file_name` is matched by file name; one without is matched by its
    `image_id` against the number in the image's file name (`000000000785.jpg` is image 785, a
    video frame is its index). An image whose name carries no number cannot be matched to
    image_id-only detections: that is an error, not a guess (a folder index would attach the
    detections of another image).
    """

    def __init__(self, path: Path, score_threshold: float = 0.0) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"boxes file not found: {path}")
        try:
            with open(path) as f:
                data = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenPoseError(f"boxes file {path} is not valid JSON: {exc}") from None
        self.path = path
        self.by_name: dict[str, list[tuple[list[float], float]]] = defaultdict(list)
        self.by_id: dict[int, list[tuple[list[float], float]]] = defaultdict(list)
        self.id_only = False  # some detections carry only an image_id
        if isinstance(data, dict):
            for name, rows in data.items():
                for row in rows:
                    if len(row) not in (4, 5):
                        raise TokenPoseError(f"{path}: box {row} of {name!r} must be [x, y, w, h] or [x, y, w, h, score]")
                    score = float(row[4]) if len(row) == 5 else 1.0
                    if score >= score_threshold:
                        self.by_name[Path(name).name].append((list(map(float, row[:4])), score))
        elif isinstance(data, list):
            for i, det in enumerate(data):
                if not isinstance(det, dict) or "bbox" not in det or len(det["bbox"]) != 4:
                    raise TokenPoseError(f"{path}: detection #{i} needs a 4-number 'bbox' (COCO detection results)")
                if "file_name" not in det and "image_id" not in det:
                    raise TokenPoseError(f"{path}: detection #{i} has neither a 'file_name' nor an 'image_id'")
                if "file_name" not in det:
                    self.id_only = True
                if det.get("category_id", 1) != 1 or float(det.get("score", 1.0)) < score_threshold:
                    continue
                row = (list(map(float, det["bbox"])), float(det.get("score", 1.0)))
                if "file_name" in det:
                    self.by_name[Path(det["file_name"]).name].append(row)
                else:
                    try:
                        self.by_id[int(det["image_id"])].append(row)
                    except (TypeError, ValueError):
                        raise TokenPoseError(f"{path}: detection #{i} has a non-integer image_id {det['image_id']!r}") from None
        else:
            raise TokenPoseError(f"{path}: expected a list of COCO detections or a {{file name: boxes}} object")

    def boxes(self, name: str, image_id: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) boxes and (N,) scores of image `name`. image_id: the image's COCO id when it has
        one (the number in its file name, a video frame's index), else None."""
        rows = list(self.by_name.get(Path(name).name, []))
        if self.id_only:
            if image_id is None:
                raise TokenPoseError(
                    f"{self.path}: its detections are matched by image_id, but {name!r} has no numeric file name "
                    "(like 000000000785.jpg) to take an image id from; add a 'file_name' to each detection, "
                    "or use a {file name: [[x, y, w, h, score]]} json"
                )
            rows += self.by_id.get(int(image_id), [])
        return (np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4),
                np.array([r[1] for r in rows], dtype=np.float64))


def list_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TokenPoseError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    return files


def _frames(path: Path) -> tuple[Iterator[np.ndarray], int, float, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise TokenPoseError(f"cannot open video {path} (unsupported codec or not a video)")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or 25.0
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def gen() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield frame
        finally:
            cap.release()

    return gen(), total, fps, size


_SAME_ID = object()  # Run.add: match image_id-keyed detections with the image's own image_id


class Run:
    """One predict run: gathers images until a batch of boxes (or of images) is full, predicts,
    draws, records."""

    def __init__(self, predictor, boxes: BoxSource | None, out: Path, keypoint_threshold: float,
                 person_threshold: float, draw: bool) -> None:
        from tokenpose.predict.detector import HogPersonDetector

        self.predictor = predictor
        self.box_source = boxes
        from tokenpose.predict.detector import HOG_MISSING, hog_available

        self.detector = HogPersonDetector() if boxes is None else None
        if boxes is None and not hog_available():
            typer.secho(f"warning: {HOG_MISSING}", fg=typer.colors.YELLOW, err=True)
        self.out = out
        self.kpt_thr = keypoint_threshold
        self.person_thr = person_threshold
        self.draw = draw
        self.results: list[dict] = []
        self.pending: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending_boxes = 0
        self.people = 0
        self.no_boxes = 0

    def add(self, name: str, image_id: int, image: np.ndarray, sink, box_id: object = _SAME_ID) -> None:
        """Queue one image; predict when the queue holds batch_size boxes or batch_size images.

        box_id: the id that image_id-keyed detections are matched with (None: the image has none;
        default: image_id). An image without boxes and nothing queued before it is handled at once.
        """
        from tokenpose.predict.detector import detect_people

        if self.box_source is not None:
            boxes, scores = self.box_source.boxes(name, image_id if box_id is _SAME_ID else box_id)
            if len(boxes) == 0:
                self.no_boxes += 1
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the missing-HOG warning is printed once above
                boxes, scores = detect_people(image, self.detector)
        self.pending.append((name, image_id, image, boxes, scores))
        self.pending_boxes += len(boxes)
        # Bounded memory: the queue holds at most batch_size boxes and batch_size images (an image
        # without boxes still waits its turn, so that drawn frames keep their order).
        limit = self.predictor.batch_size
        if self.pending_boxes >= limit or len(self.pending) >= limit or (len(boxes) == 0 and len(self.pending) == 1):
            self.flush(sink)

    def flush(self, sink) -> None:
        from tokenpose.predict.drawing import draw_poses

        if not self.pending:
            return
        names, ids, images, boxes, scores = zip(*self.pending)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            preds = self.predictor.predict(list(images), list(boxes), list(scores))
        for w in caught:
            typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
        for name, image_id, image, pred in zip(names, ids, images, preds):
            for r in pred.to_coco(image_id):
                r["file_name"] = name
                self.results.append(r)
            self.people += len(pred)
            if self.draw:
                show = pred.scores_person >= self.person_thr
                drawn = draw_poses(image, pred.keypoints[show], pred.scores[show], boxes=pred.boxes[show],
                                   keypoint_threshold=self.kpt_thr)
                sink(name, drawn)
        self.pending.clear()
        self.pending_boxes = 0

    def write_results(self) -> Path:
        path = self.out / "results.json"
        with atomic_write(path, "w") as f:
            json.dump(self.results, f)
        return path


def _image_writer(out: Path):
    def sink(name: str, image: np.ndarray) -> None:
        target = out / Path(name).name
        if target.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp"):
            target = target.with_suffix(".jpg")
        ok, buf = cv2.imencode(target.suffix, image)
        if not ok:
            raise TokenPoseError(f"cannot encode {target}")
        with atomic_write(target, "wb") as f:
            f.write(buf.tobytes())
    return sink


def _check_out_folder(source: Path, out: Path, draw: bool) -> None:
    """Refuse an output folder whose writes would replace the inputs."""
    src = source.resolve()
    dst = out.resolve()
    if source.is_dir():
        if dst == src:
            raise TokenPoseError(
                f"--out {out} is the input folder: the drawn images would overwrite the inputs; choose another folder"
            )
    elif draw:
        if source.suffix.lower() in VIDEO_SUFFIXES:
            clash = (dst / f"{source.stem}.mp4") == src
        else:
            clash = dst == src.parent and source.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")
        if clash:
            raise TokenPoseError(
                f"--out {out} is the folder of {source.name}: the drawing would overwrite the input; "
                "choose another folder"
            )


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
    batch_size: BatchOpt = None,
) -> None:
    """Predict poses on an image, a folder or a video; draw skeletons and write COCO results json.

    Without --boxes, people are found by OpenCV's built-in HOG detector (no download; upright,
    unoccluded people of at least ~128 px; the whole image is used when it finds nobody).
    """
    from tokenpose.engines.predictor import PosePredictor

    if not source.exists():
        raise FileNotFoundError(f"input not found: {source}")
    _check_out_folder(source, out, draw)
    eng = open_engine(engine, variant, device, precision)
    predictor = PosePredictor(eng, flip_test=flip, batch_size=batch_size)
    box_source = BoxSource(boxes, box_threshold) if boxes is not None else None
    out.mkdir(parents=True, exist_ok=True)
    run = Run(predictor, box_source, out, keypoint_threshold, person_threshold, draw)
    skipped: list[str] = []

    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        frames, total, fps, size = _frames(source)
        target = out / f"{source.stem}.mp4"
        # Written under a temporary name in the same folder and renamed only when complete, so an
        # interrupted run never leaves a truncated video under the final name.
        partial = out / f".{source.stem}.{os.getpid()}.partial.mp4"
        writer = None
        if draw:
            writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            if not writer.isOpened():
                partial.unlink(missing_ok=True)
                raise TokenPoseError(f"cannot write video {target}")
        sink = (lambda _name, image: writer.write(image)) if writer is not None else (lambda *_: None)
        count = 0
        done = False
        try:
            with progress_bar(f"predict {source.name}") as update:
                for index, frame in enumerate(frames):
                    run.add(f"{source.stem}_{index:06d}", index, frame, sink, box_id=index)
                    count = index + 1
                    update(count, max(total, count))
                run.flush(sink)
            done = count > 0
        finally:
            if writer is not None:
                writer.release()
                if done:
                    os.replace(partial, target)
                else:
                    partial.unlink(missing_ok=True)
        if count == 0:
            raise TokenPoseError(f"video {source} has no readable frames")
        what = f"{count} frames"
    else:
        files = list_images(source) if source.is_dir() else [source]
        sink = _image_writer(out)
        with progress_bar(f"predict {source.name}", enabled=len(files) > 1) as update:
            for index, path in enumerate(files):
                try:
                    image = read_image(path)
                except (ImageReadError, FileNotFoundError) as exc:
                    if len(files) == 1:
                        raise TokenPoseError(str(exc)) from None
                    skipped.append(str(exc))
                    continue
                run.add(path.name, image_id_for(path.name, index), image, sink, box_id=numeric_id(path.name))
                update(index + 1, len(files))
            run.flush(sink)
        what = f"{len(files) - len(skipped)} images"
    results = run.write_results()
    for problem in skipped:
        typer.secho(f"warning: skipped {problem}", fg=typer.colors.YELLOW, err=True)
    if run.no_boxes:
        typer.secho(f"warning: {run.no_boxes} image(s) have no box in {boxes}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"{run.people} people in {what}; results: {results}" + (f"; drawings in {out}{os.sep}" if draw else ""))


main = standalone(command)
