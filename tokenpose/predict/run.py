"""One predict run over an image, a folder or a video: batching, drawing, resumable results.

    job = PredictJob(Path("pics"), Path("out"), boxes=BoxSource(Path("det.json")), resume=True)
    summary = job.run(PosePredictor(load_engine("model.onnx")))

`PredictJob` checks everything it can before any engine is loaded (input exists, output folder
writable and not the input); `run` predicts in batches, appends each batch's results to
`out/results.jsonl` (see `tokenpose.predict.sinks`) and skips, with `resume`, the frames already
done there. Warnings go to `warn` (default: `warnings.warn`), one line each.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenpose.data.transforms import ImageReadError, read_image
from tokenpose.engines.predictor import PosePrediction, PosePredictor
from tokenpose.errors import TokenPoseError
from tokenpose.files import ensure_writable_dir, remove_stale_temp_files
from tokenpose.predict.boxes import BoxSource, screen_boxes
from tokenpose.predict.detector import HOG_MISSING, HogPersonDetector, detect_people, hog_available
from tokenpose.predict.drawing import draw_results
from tokenpose.predict.sinks import (
    PREDICT_TEMP_PATTERNS,
    ImageWriter,
    ResultsLog,
    check_out_folder,
    video_writer,
)
from tokenpose.predict.sources import VideoFrames, image_files, is_glob, is_video, truncation_problem

Warn = Callable[[str], None]
Sink = Callable[[str, np.ndarray], None]
_SAME_ID = object()  # Run.add: match image_id-keyed detections with the frame's own image_id


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _no_sink(_name: str, _image: np.ndarray) -> None:
    """Where frames go with drawing off."""


def frame_boxes(box_source: BoxSource | None, detector: HogPersonDetector | None, name: str, box_id: int | None,
                image: np.ndarray, warn: Warn) -> tuple[np.ndarray, np.ndarray, bool]:
    """The person boxes of one frame: (M, 4) x, y, w, h pixels, (M,) scores, and whether the boxes
    file lists the frame at all (always True with the detector). Boxes from a file are screened
    (`screen_boxes`, one warning per frame); the detector's are usable by construction."""
    if box_source is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the missing-HOG warning is given once, by the caller
            boxes, scores = detect_people(image, detector)
        return boxes, scores, True
    boxes, scores = box_source.boxes(name, box_id)
    listed = len(boxes) > 0
    boxes, scores = screen_boxes(boxes, scores, image.shape[:2], name, warn)
    return boxes, scores, listed


def coco_results(prediction: PosePrediction, image_id: int, name: str) -> list[dict]:
    """The COCO keypoint results of one frame, each with the frame's `file_name`."""
    results = prediction.to_coco(image_id)
    for r in results:
        r["file_name"] = name
    return results


class Run:
    """Gathers frames until a batch of boxes (or of frames) is full, predicts, draws, records.

    boxes: person boxes from a file, or None for the HOG detector; out: the folder whose results
    log records each batch (`log`, default a fresh `ResultsLog(out)`); keypoint_threshold /
    person_threshold: what is drawn; draw: whether frames go to the sink at all.
    """

    def __init__(self, predictor: PosePredictor, boxes: BoxSource | None, out: Path, keypoint_threshold: float,
                 person_threshold: float, draw: bool, *, log: ResultsLog | None = None, warn: Warn = _warn) -> None:
        self.predictor = predictor
        self.box_source = boxes
        self.detector = HogPersonDetector() if boxes is None else None
        self.warn = warn
        if boxes is None and not hog_available():
            warn(HOG_MISSING)
        self.log = log if log is not None else ResultsLog(out)
        self.kpt_thr = keypoint_threshold
        self.person_thr = person_threshold
        self.draw = draw
        # (name, image_id, image, boxes, scores, results: None until predicted)
        self.pending: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray, list[dict] | None]] = []
        self.pending_boxes = 0
        self.no_boxes = 0

    @property
    def results(self) -> list[dict]:
        """COCO keypoint results of every frame recorded so far, each with its "file_name"."""
        return self.log.results()

    def add(self, name: str, image_id: int, image: np.ndarray, sink: Sink, box_id: object = _SAME_ID,
            done: list[dict] | None = None) -> None:
        """Queue one BGR uint8 (H, W, 3) frame; predict when the queue holds batch_size boxes or frames.

        box_id: the id that image_id-keyed detections are matched with (None: the frame has none;
        default: image_id). done: the frame's results from an earlier run (it is only drawn).
        A frame without boxes and nothing queued before it is handled at once.
        """
        boxes, scores = np.zeros((0, 4)), np.zeros(0)
        if done is None:
            boxes, scores = self._boxes(name, image_id if box_id is _SAME_ID else box_id, image)
        self.pending.append((name, image_id, image, boxes, scores, done))
        self.pending_boxes += len(boxes)
        # Bounded memory: the queue holds at most batch_size boxes and batch_size frames (a frame
        # without boxes still waits its turn, so that drawn frames keep their order).
        limit = self.predictor.batch_size
        if self.pending_boxes >= limit or len(self.pending) >= limit or (len(boxes) == 0 and len(self.pending) == 1):
            self.flush(sink)

    def _boxes(self, name: str, box_id: int | None, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores, listed = frame_boxes(self.box_source, self.detector, name, box_id, image, self.warn)
        self.no_boxes += not listed
        return boxes, scores

    def flush(self, sink: Sink) -> None:
        """Predict the queued frames in one batch, draw them into `sink`, record their results."""
        if not self.pending:
            return
        todo = [p for p in self.pending if p[5] is None]
        preds = []
        if todo:  # a batch of resumed frames only is just drawn
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                preds = self.predictor.predict([p[2] for p in todo], [p[3] for p in todo], [p[4] for p in todo])
            for w in caught:
                self.warn(str(w.message))
        predicted = iter(preds)
        finished = []
        for name, image_id, image, _boxes, _scores, done in self.pending:
            results = done
            if results is None:
                results = coco_results(next(predicted), image_id, name)
                finished.append((name, results))
            if self.draw:
                sink(name, draw_results(image, results, keypoint_threshold=self.kpt_thr,
                                        person_threshold=self.person_thr))
        self.pending.clear()
        self.pending_boxes = 0
        if finished:
            self.log.append(finished)


@dataclass
class PredictSummary:
    """What a run did. frames: frames with results (resumed ones included); kind: "images" or
    "frames"; people: people in the results; skipped / truncated: one line per unreadable /
    cut-short image; no_boxes: frames without a box in the boxes file; resumed: frames taken from
    an earlier run; results: the results.json written."""

    frames: int
    kind: str
    people: int
    results: Path
    skipped: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    no_boxes: int = 0
    resumed: int = 0


class PredictJob:
    """Poses on `source` (an image, a folder of images, a glob pattern or a video) into folder `out`.

    Construction checks the input and the output folder, removes temp files a killed run left
    there; `run` needs only the predictor. resume: skip the frames already in `out`'s results.
    """

    def __init__(self, source: Path, out: Path, *, boxes: BoxSource | None = None, draw: bool = True,
                 keypoint_threshold: float = 0.3, person_threshold: float = 0.0, resume: bool = False) -> None:
        source, out = Path(source), Path(out)
        if is_glob(source):
            image_files(source)  # a pattern that matches no image is an error now, not after loading
        elif not source.exists():
            raise FileNotFoundError(f"input not found: {source}")
        check_out_folder(source, out, draw)
        ensure_writable_dir(out)
        remove_stale_temp_files(out, PREDICT_TEMP_PATTERNS)
        self.source, self.out, self.boxes, self.draw, self.resume = source, out, boxes, draw, resume
        self.is_video = is_video(source)
        self.thresholds = (keypoint_threshold, person_threshold)

    def run(self, predictor: PosePredictor, *, warn: Warn = _warn,
            progress: Callable[[int, int], None] | None = None) -> PredictSummary:
        """Predict every frame; write `out/results.json`. Raises TokenPoseError when no frame could
        be read. An interrupted or failed run writes the results so far and keeps the log."""
        for note in self.boxes.notes if self.boxes is not None else []:
            warn(note)
        log = ResultsLog(self.out, resume=self.resume)
        resumed = len(log.items)
        run = Run(predictor, self.boxes, self.out, *self.thresholds, self.draw, log=log, warn=warn)
        progress = progress or (lambda done, total: None)
        skipped: list[str] = []
        truncated: list[str] = []
        try:
            if self.is_video:
                order, kind = self._video(run, progress), "frames"
            else:
                order, kind = self._images(run, warn, progress, skipped, truncated), "images"
        except BaseException:
            if log.items:
                log.write(finished=False)
            raise
        return PredictSummary(
            frames=sum(name in log.items for name in order), kind=kind, people=len(log.results(order)),
            results=log.write(order), skipped=skipped, truncated=truncated, no_boxes=run.no_boxes, resumed=resumed,
        )

    def _video(self, run: Run, progress: Callable[[int, int], None]) -> list[str]:
        """Every frame in order; frames done before are drawn from their recorded results."""
        frames = VideoFrames(self.source)
        order: list[str] = []
        writer = (video_writer(self.out, self.source.stem, frames.fps, frames.size) if self.draw
                  else contextlib.nullcontext(_no_sink))
        with writer as sink:
            for index, frame in enumerate(frames):
                name = frames.frame_name(index)
                order.append(name)
                run.add(name, index, frame, sink, box_id=index, done=run.log.items.get(name))
                progress(index + 1, max(frames.total, index + 1))
            run.flush(sink)
        if not order:
            raise TokenPoseError(f"video {self.source} has no readable frames")
        return order

    def _images(self, run: Run, warn: Warn, progress: Callable[[int, int], None], skipped: list[str],
                truncated: list[str]) -> list[str]:
        """The images in order, appending unreadable ones to `skipped` and cut-short ones to
        `truncated`; images done before are skipped."""
        files = image_files(self.source)
        sink = ImageWriter(self.out) if self.draw else _no_sink
        for index, item in enumerate(files):
            if item.name not in run.log.items:
                try:
                    image = read_image(item.path)
                except (ImageReadError, FileNotFoundError) as exc:
                    if len(files) == 1:
                        raise TokenPoseError(str(exc)) from None
                    skipped.append(str(exc))
                    continue
                problem = truncation_problem(item.path)
                if problem is not None:
                    warn(problem)
                    truncated.append(problem)
                run.add(item.name, item.image_id, image, sink, box_id=item.box_id)
            progress(index + 1, len(files))
        run.flush(sink)
        order = [f.name for f in files]
        if not any(name in run.log.items for name in order):
            raise TokenPoseError(f"none of the {len(files)} images in {self.source} could be read; first: {skipped[0]}")
        return order
