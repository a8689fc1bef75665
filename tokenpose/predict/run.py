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
import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from tokenpose.data.transforms import ImageReadError, read_image
from tokenpose.engines.predictor import PosePrediction, PosePredictor
from tokenpose.errors import TokenPoseError
from tokenpose.files import ensure_writable_dir, remove_stale_temp_files
from tokenpose.predict.boxes import BoxSource, screen_boxes
from tokenpose.predict.detector import HOG_MISSING, HogPersonDetector, hog_available
from tokenpose.predict.drawing import draw_results
from tokenpose.predict.sinks import (
    PREDICT_TEMP_PATTERNS,
    ImageWriter,
    ResultsLog,
    check_out_folder,
    video_writer,
)
from tokenpose.predict.sources import VideoFrames, image_files, is_glob, is_video, truncation_problem
from tokenpose.predict.tracking import NO_TRACK, FrameSequence, TrackOptions

Warn = Callable[[str], None]
Sink = Callable[[str, np.ndarray], None]


class Detector(Protocol):
    """What finds people without a boxes file: OnnxDetector, HogPersonDetector."""

    def detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """BGR uint8 (H, W, 3) images -> per image (N, 5) x, y, w, h, score rows in its pixels."""
_SAME_ID = object()  # Run.add: match image_id-keyed detections with the frame's own image_id


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _no_sink(_name: str, _image: np.ndarray) -> None:
    """Where frames go with drawing off."""


def frame_boxes(box_source: BoxSource | None, detector: Detector | None, name: str, box_id: int | None,
                image: np.ndarray, warn: Warn) -> tuple[np.ndarray, np.ndarray, bool]:
    """The person boxes of one frame: (M, 4) x, y, w, h pixels, (M,) scores, and whether the boxes
    file lists the frame at all (always True with a detector). Without a boxes file they come from
    `detector` (an ONNX detector, or the HOG detector when None). Boxes from a file are screened
    (`screen_boxes`, one warning per frame); a detector's are usable by construction."""
    if box_source is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the missing-HOG warning is given once, by the caller
            (rows,) = (detector or HogPersonDetector()).detect([image])
        return rows[:, :4], rows[:, 4], True
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


@dataclass
class _Frame:
    """A queued frame: boxes None until detected; ids: its boxes' track ids; done: results of an
    earlier run (the frame is only drawn); index: its place in the sequence (time = index / fps)."""

    name: str
    image_id: int
    image: np.ndarray
    index: int
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    ids: np.ndarray | None = None
    done: list[dict] | None = None


class Run:
    """Gathers frames until a batch of boxes (or of frames) is full, predicts, draws, records.

    boxes: person boxes from a file, or None for `detector` (an ONNX detector; None: the HOG
    detector); out: the folder whose results log records each batch (`log`, default a fresh
    `ResultsLog(out)`); keypoint_threshold / person_threshold: what is drawn; draw: whether frames go
    to the sink at all; sequence: track ids, --det-every and smoothing over the frames, in order.
    An ONNX detector sees the queued frames in one batch when the batch is predicted.
    """

    def __init__(self, predictor: PosePredictor, boxes: BoxSource | None, out: Path, keypoint_threshold: float,
                 person_threshold: float, draw: bool, *, log: ResultsLog | None = None, warn: Warn = _warn,
                 detector: Detector | None = None, sequence: FrameSequence | None = None) -> None:
        self.predictor = predictor
        self.box_source = boxes
        self.detector = None if boxes is not None else detector or HogPersonDetector()
        self.warn = warn
        if boxes is None and detector is None and not hog_available():
            warn(HOG_MISSING)
        self.log = log if log is not None else ResultsLog(out)
        self.kpt_thr = keypoint_threshold
        self.person_thr = person_threshold
        self.draw = draw
        self.sequence = sequence
        # Frames wait for a batched detection; a frame whose boxes come from the last frame's
        # keypoints waits for nothing, so the queue then holds one frame.
        self.batch_frames = getattr(self.detector, "batch_frames", 0)
        if sequence is not None and sequence.options.det_every > 1:
            self.batch_frames = 1
        self.pending: list[_Frame] = []
        self.pending_boxes = 0
        self.no_boxes = 0
        self.frames = 0
        self.tracks: set[int] = set()

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
        frame = _Frame(name, image_id, image, self.frames, done=done)
        self.frames += 1
        if done is None:
            carried = self.sequence.carried_boxes() if self.sequence is not None else None
            if carried is not None:
                frame.boxes, frame.scores = carried
            elif not self.batch_frames:
                frame.boxes, frame.scores = self._boxes(name, image_id if box_id is _SAME_ID else box_id, image)
        self.pending.append(frame)
        found = 0 if frame.boxes is None else len(frame.boxes)
        self.pending_boxes += found
        # Bounded memory: the queue holds at most batch_size boxes and batch_size frames (a frame
        # without boxes still waits its turn, so that drawn frames keep their order).
        limit = self.predictor.batch_size
        if (self.pending_boxes >= limit or len(self.pending) >= (self.batch_frames or limit)
                or (frame.boxes is not None and found == 0 and len(self.pending) == 1)):
            self.flush(sink)

    def _boxes(self, name: str, box_id: int | None, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores, listed = frame_boxes(self.box_source, self.detector, name, box_id, image, self.warn)
        self.no_boxes += not listed
        return boxes, scores

    def _prepare(self, todo: list[_Frame]) -> None:
        """Detect the frames still without boxes in one call, then give their boxes track ids, in order."""
        waiting = [f for f in todo if f.boxes is None]
        for frame, rows in zip(waiting, self.detector.detect([f.image for f in waiting]) if waiting else []):
            frame.boxes, frame.scores = rows[:, :4], rows[:, 4]
        if self.sequence is not None:
            for frame in todo:
                frame.ids = self.sequence.assign_ids(frame.boxes, frame.scores)

    def _results(self, frame: _Frame, prediction: PosePrediction) -> list[dict]:
        """The frame's COCO results; with tracking each person carries its "track_id"."""
        if self.sequence is None:
            return coco_results(prediction, frame.image_id, frame.name)
        ids, keypoints = self.sequence.after_pose(frame.index, frame.ids, prediction)
        results = coco_results(dataclasses.replace(prediction, keypoints=keypoints), frame.image_id, frame.name)
        if self.sequence.options.tracking:
            for r, track in zip(results, ids.tolist()):
                r["track_id"] = int(track)
                self.tracks.add(int(track))
        return results

    def flush(self, sink: Sink) -> None:
        """Predict the queued frames in one batch, draw them into `sink`, record their results."""
        if not self.pending:
            return
        todo = [f for f in self.pending if f.done is None]
        preds = []
        if todo:  # a batch of resumed frames only is just drawn
            self._prepare(todo)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                preds = self.predictor.predict([f.image for f in todo], [f.boxes for f in todo],
                                               [f.scores for f in todo])
            for w in caught:
                self.warn(str(w.message))
        predicted = iter(preds)
        finished = []
        for frame in self.pending:
            results = frame.done
            if results is None:
                results = self._results(frame, next(predicted))
                finished.append((frame.name, results))
            if self.draw:
                sink(frame.name, draw_results(frame.image, results, keypoint_threshold=self.kpt_thr,
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
    an earlier run; results: the results.json written; tracks: distinct track ids given (--track);
    detector_frames: frames that went to the detector (the others took boxes from keypoints)."""

    frames: int
    kind: str
    people: int
    results: Path
    skipped: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    no_boxes: int = 0
    resumed: int = 0
    tracks: int = 0
    detector_frames: int | None = None


class PredictJob:
    """Poses on `source` (an image, a folder of images, a glob pattern or a video) into folder `out`.

    Construction checks the input and the output folder, removes temp files a killed run left
    there; `run` needs only the predictor. resume: skip the frames already in `out`'s results.
    detector: finds people when `boxes` is None (`tokenpose.predict.detectors.load_detector`; None:
    the HOG detector); tracking: track ids, --det-every and smoothing (frames in order; a video's
    frame rate replaces `tracking.fps`).
    """

    def __init__(self, source: Path, out: Path, *, boxes: BoxSource | None = None, draw: bool = True,
                 keypoint_threshold: float = 0.3, person_threshold: float = 0.0, resume: bool = False,
                 detector: Detector | None = None, tracking: TrackOptions | None = None) -> None:
        source, out = Path(source), Path(out)
        if is_glob(source):
            image_files(source)  # a pattern that matches no image is an error now, not after loading
        elif not source.exists():
            raise FileNotFoundError(f"input not found: {source}")
        check_out_folder(source, out, draw)
        ensure_writable_dir(out)
        remove_stale_temp_files(out, PREDICT_TEMP_PATTERNS)
        self.source, self.out, self.boxes, self.draw, self.resume = source, out, boxes, draw, resume
        self.detector = detector
        if tracking is not None and tracking.det_every > 1 and boxes is not None:
            raise TokenPoseError("--det-every takes boxes from a detector (--detector or the HOG one), not from --boxes")
        self.tracking = tracking if tracking is not None and tracking.active else None
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
        run = Run(predictor, self.boxes, self.out, *self.thresholds, self.draw, log=log, warn=warn,
                  detector=self.detector, sequence=self._sequence(log))
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
        return self.summarize(
            log, order, kind, skipped=skipped, truncated=truncated, no_boxes=run.no_boxes, resumed=resumed,
            tracks=len(run.tracks - {NO_TRACK}),
            detector_frames=None if run.sequence is None else run.sequence.detections,
        )

    def summarize(self, log: ResultsLog, order: list[str], kind: str, *, skipped: list[str],
                  **counts) -> PredictSummary:
        """Write `out/results.json` (frames in `order`) and say what the run did; TokenPoseError when
        no input gave a result. kind: "images" or "frames"; counts: the other PredictSummary fields.
        Shared by the local run and the Ray job (`tokenpose.serving.batch_job`)."""
        if not any(name in log.items for name in order):
            first = skipped[0] if skipped else "no frame gave a result"
            raise TokenPoseError(f"none of the {len(order)} {kind} in {self.source} could be read; first: {first}")
        return PredictSummary(frames=sum(name in log.items for name in order), kind=kind,
                              people=len(log.results(order)), results=log.write(order), skipped=skipped, **counts)

    def _sequence(self, log: ResultsLog) -> FrameSequence | None:
        """The frame-to-frame state, track ids continuing above those `log` already holds."""
        if self.tracking is None:
            return None
        options = self.tracking
        if self.is_video:
            frames = VideoFrames(self.source)
            frames.capture.release()
            options = dataclasses.replace(options, fps=frames.fps)
        recorded = [r.get("track_id", 0) for r in log.results()]
        return FrameSequence(options, first_id=1 + max(recorded, default=0))

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
        return [f.name for f in files]
