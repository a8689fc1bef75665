"""Outputs of `tokenpose predict`: the resumable results log, drawn images, the drawn video.

`OUT/results.jsonl` gets one line per finished frame (`{"item": name, "results": [COCO keypoint
results]}`), appended and fsynced after every batch, so a run killed at any point keeps every
frame it finished. A finished run turns it into `OUT/results.json` (a COCO keypoint results
list, in input order) and removes it; an interrupted run writes `results.json` with the frames
done so far and keeps the log, which `done_items` reads back to resume.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from tokenpose.errors import TokenPoseError
from tokenpose.files import STALE_TEMP_PATTERNS, atomic_write
from tokenpose.predict.sources import VIDEO_SUFFIXES, glob_images, is_glob

RESULTS = "results.json"
LOG = "results.jsonl"
DRAWABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


# The hidden temp files a killed run leaves in its folder: `.NAME.*.tmp` of atomic writes and
# the `.STEM.PID.partial.mp4` of `video_writer`.
PREDICT_TEMP_PATTERNS = (*STALE_TEMP_PATTERNS, ".*.partial.mp4")


def _read_log(path: Path) -> dict[str, list[dict]]:
    """Lines of a results log; a last line cut short by a kill is ignored."""
    items: dict[str, list[dict]] = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            items[str(entry["item"])] = list(entry["results"])
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines):
                break
            raise TokenPoseError(
                f"{path}: line {number} is not a results-log entry; remove the file to start over") from None
    return items


def done_items(out: Path) -> dict[str, list[dict]]:
    """The frames whose results are already in folder `out`: {frame name: its COCO results}.

    Read from the log of an unfinished run, else from the `results.json` of a finished one (where
    a frame in which nobody was found leaves no entry, so it is not counted as done).
    """
    log, results = Path(out) / LOG, Path(out) / RESULTS
    if log.is_file():
        return _read_log(log)
    if not results.is_file():
        return {}
    try:
        rows = json.loads(results.read_text())
        items: dict[str, list[dict]] = {}
        for row in rows:
            items.setdefault(str(row["file_name"]), []).append(row)
    except (json.JSONDecodeError, KeyError, TypeError):
        raise TokenPoseError(f"{results} is not a tokenpose predict results file; cannot resume from it") from None
    return items


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError (full disk, a folder gone read-only) becomes one line naming the file."""
    try:
        yield
    except OSError as exc:
        raise TokenPoseError(f"cannot write {path}: {exc.strerror or exc}") from None


def _lines(entries: Iterable[tuple[str, list[dict]]]) -> str:
    return "".join(json.dumps({"item": name, "results": results}) + "\n" for name, results in entries)


class ResultsLog:
    """The results of one predict run into folder `out` (see the module docstring).

    resume: start from the frames already done there (`done_items`); otherwise the results of an
    earlier run in `out` are forgotten when this one starts. `items` holds every finished frame's
    COCO results, {frame name: [result dict, ...]}, in the order they finished.
    """

    def __init__(self, out: Path, resume: bool = False) -> None:
        self.out = Path(out)
        self.items: dict[str, list[dict]] = done_items(self.out) if resume else {}
        self.log = self.out / LOG
        if not resume:
            self.log.unlink(missing_ok=True)
            (self.out / RESULTS).unlink(missing_ok=True)
        elif self.items:  # rewritten without a half-written last line before anything is appended
            with _writing(self.log), atomic_write(self.log, "w") as f:
                f.write(_lines(self.items.items()))

    def append(self, finished: Iterable[tuple[str, list[dict]]]) -> None:
        """Record a batch of finished frames: one write, then fsync."""
        finished = list(finished)
        self.items.update(finished)
        with _writing(self.log), open(self.log, "a") as f:
            f.write(_lines(finished))
            f.flush()
            os.fsync(f.fileno())

    def results(self, order: Iterable[str] | None = None) -> list[dict]:
        """All COCO results, frames in `order` (default: the order they finished)."""
        names = self.items if order is None else [n for n in order if n in self.items]
        return [r for name in names for r in self.items[name]]

    def write(self, order: Iterable[str] | None = None, finished: bool = True) -> Path:
        """Write `out/results.json` (atomically); a finished run also removes the log."""
        path = self.out / RESULTS
        with _writing(path), atomic_write(path, "w") as f:
            json.dump(self.results(order), f)
        if finished:
            self.log.unlink(missing_ok=True)
        return path


class ImageWriter:
    """Writes each drawn frame to `out/NAME` (atomically); a suffix OpenCV cannot encode becomes .jpg."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __call__(self, name: str, image: np.ndarray) -> None:
        target = self.out / Path(name).name
        if target.suffix.lower() not in DRAWABLE_SUFFIXES:
            target = target.with_suffix(".jpg")
        ok, buf = cv2.imencode(target.suffix, image)
        if not ok:
            raise TokenPoseError(f"cannot encode {target}")
        with _writing(target), atomic_write(target, "wb") as f:
            f.write(buf.tobytes())


@contextlib.contextmanager
def video_writer(out: Path, stem: str, fps: float, size: tuple[int, int]) -> Iterator:
    """Yields a sink writing frames to `out/STEM.mp4` (mp4v; size (W, H) pixels).

    The video is written under a hidden temporary name in the same folder and renamed only when
    the block ends normally with at least one frame, so an interrupted run never leaves a
    truncated video under the final name.
    """
    target = out / f"{stem}.mp4"
    partial = out / f".{stem}.{os.getpid()}.partial.mp4"
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        partial.unlink(missing_ok=True)
        raise TokenPoseError(f"cannot write video {target}")
    frames = [0]

    def sink(_name: str, image: np.ndarray) -> None:
        writer.write(image)
        frames[0] += 1

    try:
        yield sink
    except BaseException:
        writer.release()
        partial.unlink(missing_ok=True)
        raise
    writer.release()
    if frames[0]:
        os.replace(partial, target)
    else:
        partial.unlink(missing_ok=True)


def check_out_folder(source: Path, out: Path, draw: bool) -> None:
    """Refuse an output folder whose writes would replace the inputs."""
    src = source.resolve()
    dst = out.resolve()
    if source.is_dir():
        if dst == src:
            raise TokenPoseError(
                f"--out {out} is the input folder: the drawn images would overwrite the inputs; choose another folder"
            )
    elif draw:
        if is_glob(source):
            clash = any(p.parent.resolve() == dst for p in glob_images(source))
        elif source.suffix.lower() in VIDEO_SUFFIXES:
            clash = (dst / f"{source.stem}.mp4") == src
        else:
            clash = dst == src.parent and source.suffix.lower() in DRAWABLE_SUFFIXES
        if clash:
            raise TokenPoseError(
                f"--out {out} is the folder of {source.name}: the drawing would overwrite the input; "
                "choose another folder"
            )
