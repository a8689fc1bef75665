"""`tokenpose predict ... --ray`: the predict job as a streaming Ray Data pipeline.

    read + decode + boxes (tasks)  ->  crop + engine + decode + draw (engine actors)  ->  write (driver)

The same `PredictJob` checks the input and output folder first; frames go through the same box
screen, `PosePredictor` and drawing as the local run, and the driver records every batch in the same
resumable results log (`tokenpose.predict.sinks.ResultsLog`), so `--resume` works across both and
the results equal the local run's. Ray Data retries the tasks of a worker that dies; the engine
actors are restarted and load the engine once each. Order is preserved, so a video's drawn frames
are written in order.

Ray is the `serve` extra: imported inside the functions here.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose.data.transforms import ImageReadError, read_image
from tokenpose.engines.base import load_engine
from tokenpose.engines.predictor import PosePredictor
from tokenpose.errors import TokenPoseError
from tokenpose.predict.detector import HOG_MISSING, HogPersonDetector, hog_available
from tokenpose.predict.drawing import draw_results
from tokenpose.predict.run import PredictJob, PredictSummary, Warn, coco_results, frame_boxes
from tokenpose.predict.sinks import ImageWriter, ResultsLog, video_writer
from tokenpose.predict.sources import VideoFrames, image_files, truncation_problem

__all__ = ["RayOptions", "run_on_ray"]

VIDEO_CHUNK = 256  # frames one read task decodes (it skips to its first frame with grab())


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the job runs: the engine file, Ray cluster, engine actors, crops per call."""

    engine: Path
    address: str | None = None  # None: a local Ray; "auto" / "ray://host:10001": a cluster
    workers: int = 1
    batch: int = 32
    flip: bool = False
    cpus_per_worker: float = 1.0
    load_options: dict[str, str] = field(default_factory=dict)  # load_engine's variant / device / precision

    def open_engine(self):
        return load_engine(self.engine, **self.load_options)


class _Loader:
    """Read task: one item -> the frame(s) with their boxes, or the reason it is unusable."""

    def __init__(self, job: PredictJob) -> None:
        self.boxes = job.boxes
        # job.detector, an ONNX detector, travels as its spec and loads once per read actor
        self.detector = (job.detector or HogPersonDetector()) if job.boxes is None else None

    def _frame(self, name: str, image_id: int, box_id: int | None, image: np.ndarray, done: str) -> dict[str, Any]:
        notes: list[str] = []
        boxes, scores, listed = np.zeros((0, 4)), np.zeros(0), True
        if not done:
            boxes, scores, listed = frame_boxes(self.boxes, self.detector, name, box_id, image, notes.append)
        return {"name": name, "image_id": image_id, "image": image, "boxes": boxes, "scores": scores,
                "listed": listed, "done": done, "notes": json.dumps(notes), "error": "", "truncated": ""}

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        if item["kind"] == "video":
            # Decoded in sequence from the first frame, like the local run (a seek may land elsewhere).
            frames = VideoFrames(Path(item["path"]))
            out = []
            try:
                for _ in range(item["start"]):
                    if not frames.capture.grab():
                        return out
                for index in range(item["start"], item["stop"]):
                    ok, frame = frames.capture.read()
                    if not ok:
                        break
                    name = frames.frame_name(index)
                    out.append(self._frame(name, index, index, frame, item["done"].get(name, "")))
            finally:
                frames.capture.release()
            return out
        path = Path(item["path"])
        try:
            image = read_image(path)
        except (ImageReadError, FileNotFoundError) as exc:
            row = self._frame(path.name, item["image_id"], None, np.zeros((1, 1, 3), np.uint8), "[]")
            return [{**row, "error": str(exc)}]
        row = self._frame(path.name, item["image_id"], item["box_id"], image, "")
        problem = truncation_problem(path)
        if problem is not None:
            row["notes"] = json.dumps([problem, *json.loads(row["notes"])])
            row["truncated"] = problem
        return [row]


class _PoseWorker:
    """Engine actor: loads the engine once; predicts and draws a batch of frames."""

    def __init__(self, options: RayOptions, draw: bool, thresholds: tuple[float, float]) -> None:
        self.predictor = PosePredictor(options.open_engine(), flip_test=options.flip, batch_size=options.batch)
        self.draw, self.thresholds = draw, thresholds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["name"])
        todo = [i for i in range(n) if not batch["error"][i] and not batch["done"][i]]
        predictions = iter(self.predictor.predict(
            [batch["image"][i] for i in todo], [batch["boxes"][i] for i in todo], [batch["scores"][i] for i in todo]))
        results, drawn = [], []
        for i in range(n):
            if batch["error"][i]:
                rows = []
            elif batch["done"][i]:
                rows = json.loads(batch["done"][i])
            else:
                rows = coco_results(next(predictions), int(batch["image_id"][i]), str(batch["name"][i]))
            results.append(json.dumps(rows))
            image = batch["image"][i]
            drawn.append(draw_results(image, rows, keypoint_threshold=self.thresholds[0],
                                      person_threshold=self.thresholds[1])
                         if self.draw and not batch["error"][i] else np.zeros((1, 1, 3), np.uint8))
        out = {k: batch[k] for k in ("name", "done", "listed", "notes", "error", "truncated")}
        out["results"] = np.array(results, dtype=object)
        out["drawn"] = np.array(drawn + [None], dtype=object)[:-1]  # an object array of (H, W, 3) arrays
        return out


def _items(job: PredictJob, log: ResultsLog) -> tuple[list[dict[str, Any]], list[str], Any]:
    """Ray Data's input rows (images not done yet, or chunks of video frames), the frame order, and
    the video's reader (None for images)."""
    if job.is_video:
        frames = VideoFrames(job.source)
        total = frames.total
        frames.capture.release()
        if total <= 0:
            raise TokenPoseError(f"video {job.source} reports no frame count; --ray needs it to split the video")
        names = [frames.frame_name(i) for i in range(total)]
        items = [{"kind": "video", "path": str(job.source), "start": a, "stop": min(a + VIDEO_CHUNK, total),
                  "done": {n: json.dumps(log.items[n]) for n in names[a:a + VIDEO_CHUNK] if n in log.items}}
                 for a in range(0, total, VIDEO_CHUNK)]
        return items, names, frames
    files = image_files(job.source)
    items = [{"kind": "image", "path": str(f.path), "image_id": f.image_id, "box_id": f.box_id}
             for f in files if f.name not in log.items]
    return items, [f.name for f in files], None


def _dataset(job: PredictJob, options: RayOptions, items: list[dict[str, Any]]):
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # video frames are written in order
    context.enable_progress_bars = False  # the CLI shows one bar over frames
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    rows = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 64)))
    loaded = rows.flat_map(_Loader, fn_constructor_args=(job,), compute=ray.data.ActorPoolStrategy(size=1))
    return loaded.map_batches(
        _PoseWorker, fn_constructor_args=(options, job.draw, job.thresholds), batch_size=options.batch,
        compute=ray.data.ActorPoolStrategy(size=options.workers), num_cpus=options.cpus_per_worker,
        batch_format="numpy", num_gpus=1 if options.load_options.get("device", "").startswith("cuda") else None,
    )


@contextlib.contextmanager
def _ray(address: str | None) -> Iterator[None]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run_on_ray(job: PredictJob, options: RayOptions, *, warn: Warn,
               progress: Callable[[int, int], None] | None = None) -> PredictSummary:
    """Run `job` on Ray; same outputs and summary as `job.run(predictor)`."""
    if options.workers < 1 or options.batch < 1:
        raise TokenPoseError(f"--workers and --batch must be >= 1, got {options.workers} and {options.batch}")
    PosePredictor(options.open_engine(), batch_size=options.batch)  # a bad engine or batch fails before Ray starts
    for note in job.boxes.notes if job.boxes is not None else []:
        warn(note)
    if job.tracking is not None:
        raise TokenPoseError("--track, --det-every and --smooth follow frames in order: not with --ray")
    if job.boxes is None and job.detector is None and not hog_available():
        warn(HOG_MISSING)
    log = ResultsLog(job.out, resume=job.resume)
    resumed = len(log.items)
    items, order, video = _items(job, log)
    progress = progress or (lambda done, total: None)
    state = {"done": len(order) - len(items) if video is None else 0, "skipped": [], "truncated": [], "no_boxes": 0}
    try:
        with _ray(options.address):
            if video is not None and job.draw:
                with video_writer(job.out, job.source.stem, video.fps, video.size) as sink:
                    _consume(job, options, items, log, sink, warn, progress, state, len(order))
            else:
                sink = ImageWriter(job.out) if job.draw else None
                _consume(job, options, items, log, sink, warn, progress, state, len(order))
    except BaseException:
        if log.items:
            log.write(finished=False)
        raise
    return job.summarize(log, order, "frames" if video is not None else "images", skipped=state["skipped"],
                         truncated=state["truncated"], no_boxes=state["no_boxes"], resumed=resumed)


def _consume(job, options, items, log, sink, warn, progress, state, total) -> None:
    """Drive the pipeline: record each batch's results, write its drawings, report progress."""
    if not items:
        return
    for batch in _dataset(job, options, items).iter_batches(batch_size=options.batch, batch_format="numpy"):
        finished = []
        for i, name in enumerate(batch["name"]):
            name = str(name)
            if batch["error"][i]:
                state["skipped"].append(str(batch["error"][i]))
                continue
            for note in json.loads(batch["notes"][i]):
                warn(note)
            if batch["truncated"][i]:
                state["truncated"].append(str(batch["truncated"][i]))
            state["no_boxes"] += not bool(batch["listed"][i])
            if not batch["done"][i]:
                finished.append((name, json.loads(batch["results"][i])))
            if sink is not None:
                sink(name, batch["drawn"][i])
            state["done"] += 1
        if finished:
            log.append(finished)
        progress(state["done"], total)
