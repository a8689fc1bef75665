"""Inputs of `tokenpose predict`: an image, a folder of images, a glob pattern or a video, as named frames.

Every frame has a name (the image's file name, `STEM_000123` for a video's frame 123), a COCO
image id (the number in a numeric file name, else its index) and, for matching `--boxes`
detections that carry only an image_id, the id to match with (None for a non-numeric name).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tokenpose.errors import TokenPoseError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}

_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def image_id_for(name: str, index: int) -> int:
    """COCO-style numeric file names keep their number as image id; other files get their index."""
    stem = Path(name).stem
    return int(stem) if stem.isdigit() else index


def numeric_id(name: str) -> int | None:
    """The number a COCO-style file name carries (`000000000785.jpg` -> 785), else None."""
    stem = Path(name).stem
    return int(stem) if stem.isdigit() else None


def list_images(folder: Path) -> list[Path]:
    """The image files of `folder` (not its subfolders), sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TokenPoseError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    return files


def truncation_problem(path: Path) -> str | None:
    """Why a JPEG or PNG file looks cut short (no end marker), else None.

    libjpeg decodes a truncated JPEG anyway ("Premature end of JPEG file" on stderr, which OpenCV
    does not pass on) and fills the missing rows with grey, so the end of the file is checked.
    Cameras may pad a JPEG with zero bytes after its end marker; those are ignored.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 4096))
        tail = f.read().rstrip(b"\x00")
    if head.startswith(_JPEG_START) and not tail.endswith(_JPEG_END):
        return f"{path} is truncated (no JPEG end marker): its missing part decodes as grey"
    if head.startswith(_PNG_START) and not tail.endswith(_PNG_END):
        return f"{path} is truncated (no PNG end chunk): its missing rows decode as blank"
    return None


@dataclass(frozen=True)
class ImageFile:
    """One image of a folder (or the single image given): its frame name and ids."""

    path: Path
    image_id: int
    box_id: int | None

    @property
    def name(self) -> str:
        return self.path.name


def is_glob(source: Path) -> bool:
    """A pattern such as `shots/*.jpg` (that names no existing file)."""
    return not source.exists() and any(c in str(source) for c in "*?[")


def glob_images(pattern: Path) -> list[Path]:
    """The image files a glob pattern matches, sorted by path; TokenPoseError when there are none."""
    anchor = Path(pattern.anchor or ".")
    relative = pattern.relative_to(anchor) if pattern.is_absolute() else pattern
    files = sorted(p for p in anchor.glob(str(relative)) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TokenPoseError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) match {pattern}")
    return files


def image_files(source: Path) -> list[ImageFile]:
    """The images of a folder (sorted by name), of a glob pattern (sorted by path) or the single
    image file `source`."""
    if source.is_dir():
        paths = list_images(source)
    else:
        paths = glob_images(source) if is_glob(source) else [source]
    return [ImageFile(p, image_id_for(p.name, i), numeric_id(p.name)) for i, p in enumerate(paths)]


class VideoFrames:
    """The frames of a video file, read one at a time: BGR uint8 (H, W, 3) arrays.

    total: the frame count the container claims (0 when unknown); fps: frames per second (25 when
    unknown); size: (W, H) pixels, as cv2.VideoWriter takes it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # FFmpeg writes its complaints about a broken file ("moov atom not found") straight to
        # stderr; the error below says it in one line. Read when the first capture opens; a
        # level the user set is kept.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            raise TokenPoseError(f"cannot open video {path} (unsupported codec or not a video)")
        self.total = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0) or 25.0
        self.size = (int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def frame_name(self, index: int) -> str:
        return f"{self.path.stem}_{index:06d}"

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = self.capture.read()
                if not ok:
                    return
                yield frame
        finally:
            self.capture.release()
