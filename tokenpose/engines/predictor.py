"""PosePredictor: person boxes in, keypoints in image pixels out, in batches, with any engine.

Images are BGR uint8 arrays (as `cv2.imread` returns) or paths; pass `color="rgb"` for arrays
decoded by PIL / imageio. For one image or a list of images, every person box is cropped
(`preprocess_crops` of the data pipeline: box -> center/scale with the x1.25 padding, unbiased
affine, then the engine's own mean/std and colour order from `engine.meta`),
the crops of all images go into one batch (split at the engine's max batch, or at the size it runs
fastest at with `batch_size="auto"`), each chunk is
one engine call (a chunk below the engine's `min_batch` is padded by repeating its last crop, and
the extra rows are dropped), and the heatmaps are decoded in one vectorised pass (`HeatmapCodec`:
argmax + DARK, inverse affine back to the image). The optional flip test is the official one: the mirrored
crops run in the same call and their heatmaps are flipped back and averaged, with no shift.

Boxes are (N, 4) `x, y, w, h` or (N, 5) `x, y, w, h, score` rows (the `--boxes` file format); any
other shape is an InputShapeError. A box that is not finite, has zero size or lies outside its
image is skipped with a warning; its index is kept in `PosePrediction.skipped`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tokenpose.data.heatmaps import HeatmapCodec, rescore
from tokenpose.data.transforms import (
    box_to_center_scale,
    flip_back_heatmaps,
    preprocess_crops,
    read_image,
)
from tokenpose.engines.base import Engine, EngineMeta, pad_batch
from tokenpose.engines.chunking import auto_chunk_size, best_chunk_size
from tokenpose.errors import InputShapeError, TokenPoseError

ImageLike = np.ndarray | str | os.PathLike
COLORS = ("bgr", "rgb")


@dataclass
class PosePrediction:
    """The people found in one image. N people, J joints; pixels of the input image, 0-based.

    keypoints: (N, J, 2) float64 (x, y); scores: (N, J) float32 heatmap maxima (joint confidence);
    boxes: (N, 4) float64 the (x, y, w, h) boxes used; box_scores: (N,) float64;
    centers: (N, 2) pixels and scales: (N, 2) units of 200 px, the crops taken;
    scores_person: (N,) the official rescoring (mean joint score above 0.2, times the box score);
    skipped: indices into the caller's boxes that were not usable (bad size / outside the image /
    over MAX_BOX_FACTOR times the image).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    box_scores: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    image_hw: tuple[int, int]
    skipped: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def scores_person(self) -> np.ndarray:
        if len(self) == 0:
            return np.zeros(0)
        return rescore(self.scores, self.box_scores)

    def to_coco(self, image_id: int, category_id: int = 1) -> list[dict]:
        """COCO keypoint results: one dict per person (keypoints = [x, y, score] * J)."""
        person = self.scores_person
        return [
            {
                "image_id": int(image_id), "category_id": int(category_id),
                "keypoints": [float(v) for v in np.concatenate([k, s[:, None]], axis=1).reshape(-1)],
                "score": float(p), "bbox": [float(v) for v in b], "box_score": float(bs),
            }
            for k, s, p, b, bs in zip(self.keypoints, self.scores, person, self.boxes, self.box_scores)
        ]


def as_bgr_image(image: ImageLike, color: str = "bgr") -> np.ndarray:
    """A path (read with `read_image`) or an array -> BGR uint8 (H, W, 3).

    Arrays may be (H, W) grey, (H, W, 3) or (H, W, 4) uint8, in `color` order: "bgr" (OpenCV,
    the default) or "rgb" (PIL, imageio; swapped to BGR here); a path is decoded to BGR whatever
    `color` says. Raises InputShapeError for None (what `cv2.imread` returns for a file it cannot
    read), an empty or otherwise unusable array; FileNotFoundError / ImageReadError for files.
    """
    if isinstance(image, str | os.PathLike):
        return read_image(image)
    if image is None:
        raise InputShapeError(
            "expected an (H, W, 3) BGR uint8 image or a path, got None (cv2.imread returns None for a missing "
            "or unreadable file)"
        )
    if not isinstance(image, np.ndarray):
        raise InputShapeError(f"expected an image path or a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise InputShapeError(f"empty image (shape {image.shape})")
    if image.dtype != np.uint8:
        raise InputShapeError(f"expected a uint8 image (as cv2.imread returns), got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputShapeError(f"expected an (H, W, 3) BGR image, got shape {image.shape}")
    if color == "rgb":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def as_boxes(boxes, box_scores, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes of one image -> ((N, 4) float64 x, y, w, h pixels, (N,) float64 box scores).

    boxes: (N, 4) `x, y, w, h` or (N, 5) `x, y, w, h, score` (array or nested list; no boxes:
    `[]` or an empty (0, 4) array). box_scores: (N,) or None (all 1; must be None for (N, 5) boxes, whose
    fifth column is the score). Raises InputShapeError naming `where` and the shape it got.
    """
    expected = "boxes must be (N, 4) rows of x, y, w, h or (N, 5) rows of x, y, w, h, score"
    if boxes is None:
        raise InputShapeError(f"{where}: {expected}, got None")
    try:
        b = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputShapeError(f"{where}: {expected}, got a {type(boxes).__name__} that is not a numeric array") from None
    if b.shape == (0,):  # `[]`: no boxes
        b = np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] not in (4, 5):
        raise InputShapeError(f"{where}: {expected}, got shape {b.shape}")
    if b.shape[1] == 5:
        if box_scores is not None:
            raise InputShapeError(f"{where}: (N, 5) boxes carry their scores in the fifth column; pass no box_scores")
        return b[:, :4], b[:, 4].copy()
    if box_scores is None:
        return b, np.ones(len(b))
    try:
        s = np.asarray(box_scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputShapeError(f"{where}: box scores must be numbers, got {type(box_scores).__name__}") from None
    if s.shape not in ((len(b),), (len(b), 1)):
        raise InputShapeError(f"{where}: {len(b)} boxes but box scores of shape {s.shape}")
    return b, s.reshape(-1)


# A box wider or taller than this many image widths / heights is a unit or parsing mistake (a box
# in another image's pixels, a normalised box scaled twice): its crop would be almost all padding
# and its keypoints land far outside the picture.
MAX_BOX_FACTOR = 4.0


def usable_boxes(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(N,) bool: finite, width and height > 0 and at most MAX_BOX_FACTOR times the image's, and
    overlapping the image [0, W) x [0, H)."""
    h, w = image_hw
    x, y, bw, bh = boxes.T
    finite = np.isfinite(boxes).all(axis=1)
    with np.errstate(invalid="ignore"):
        sized = (bw > 0) & (bh > 0) & (bw <= MAX_BOX_FACTOR * w) & (bh <= MAX_BOX_FACTOR * h)
        return finite & sized & (x < w) & (y < h) & (x + bw > 0) & (y + bh > 0)


class PosePredictor:
    """Top-down pose estimation with any `Engine`.

    engine: the Engine (see `tokenpose.load_engine`); its `meta` decides the crop size, the
    normalisation (mean/std, colour order), the heatmap decoding and the flip pairs.
    flip_test: the official flip test (two passes' worth of crops per call).
    batch_size: the most crops per engine call. An int is used as given (capped at the engine's
    max_batch, raised to its min_batch); None: the engine's max_batch, else 32; "auto": the size
    this engine is fastest per image at on this machine, up to that same limit (measured once and
    cached, `tokenpose.engines.chunking`; GPU engines take the limit); a mapping {batch: images/s}
    (e.g. from a tokenpose-bench result): its fastest batch, the smallest within 5% of the best.
    Chunks smaller than min_batch are padded with copies of their last crop. The predictor keeps
    no state between calls.
    """

    def __init__(self, engine: Engine, *, flip_test: bool = False,
                 batch_size: int | str | Mapping[int, float] | None = None) -> None:
        self.engine = engine
        self.meta: EngineMeta = engine.meta
        self.flip_test = bool(flip_test)
        limit = engine.max_batch
        self.min_batch = int(engine.min_batch)
        if self.min_batch < 1:
            raise TokenPoseError(f"{engine.name} engine has an invalid min_batch {engine.min_batch!r}")
        if limit is not None and self.min_batch > limit:
            raise TokenPoseError(f"{engine.name} engine: min_batch {self.min_batch} exceeds its max_batch {limit}")
        size = self._chunk_size(batch_size, limit or 32)
        if limit is not None:
            size = min(size, limit)
        if size < 1:
            raise TokenPoseError(f"batch size must be >= 1, got {size}")
        # Every call runs at least min_batch rows (short chunks are padded): a smaller batch size
        # would only add padding, so it is raised to the engine's minimum.
        self.batch_size = max(size, self.min_batch)
        self.codec = HeatmapCodec.from_config(self.meta)

    def _chunk_size(self, batch_size: int | str | Mapping[int, float] | None, limit: int) -> int:
        """The batch size `batch_size` asks for (see the class docstring), before the engine's bounds."""
        if batch_size == "auto":
            return auto_chunk_size(self.engine, limit)
        if isinstance(batch_size, Mapping):
            usable = {int(b): float(v) for b, v in batch_size.items() if self.min_batch <= int(b) <= limit}
            if not usable:
                raise TokenPoseError(f"batch_size table {dict(batch_size)} has no batch between "
                                     f"{self.min_batch} and {limit}")
            return best_chunk_size(usable)
        if isinstance(batch_size, str):
            raise TokenPoseError(f"batch_size must be an integer, 'auto' or a {{batch: images/s}} table, got {batch_size!r}")
        return batch_size or limit

    @property
    def config(self) -> EngineMeta:
        """`meta`, under the name callers written against a ModelConfig use (sizes, joints)."""
        return self.meta

    def heatmaps(self, inputs: np.ndarray) -> np.ndarray:
        """Run the engine on (N, 3, H, W) float32 crops in chunks -> (N, J, h, w) float32 heatmaps.

        With flip_test, each chunk carries the crops and their mirror images (so a chunk holds
        batch_size // 2 people when that is >= 1), and the result is the official average.
        Raises TokenPoseError when the engine returns the wrong shape or non-finite values.
        """
        n = inputs.shape[0]
        out = np.empty((n, self.meta.num_joints, *self.meta.heatmap_hw), dtype=np.float32)
        paired = self.flip_test and self.batch_size >= 2
        step = self.batch_size // 2 if paired else self.batch_size
        for start in range(0, n, step):
            chunk = inputs[start:start + step]
            k = chunk.shape[0]
            if self.flip_test:
                mirrored = np.ascontiguousarray(chunk[..., ::-1])
                if paired:
                    both = self._run(np.concatenate([chunk, mirrored]))
                    plain, flipped = both[:k], both[k:]
                else:
                    plain, flipped = self._run(chunk), self._run(mirrored)
                out[start:start + k] = (plain + flip_back_heatmaps(flipped, self.meta.flip_pairs)) * 0.5
            else:
                out[start:start + k] = self._run(chunk)
        return out

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One engine call. A batch below the engine's min_batch (TensorRT profile / AOTInductor
        minimum, a static-batch ONNX model's batch) is padded by repeating its last crop; the extra
        rows are dropped from the result."""
        padded, n = pad_batch(batch, self.min_batch)
        hm = self.engine(padded)
        want = (padded.shape[0], self.meta.num_joints, *self.meta.heatmap_hw)
        if not isinstance(hm, np.ndarray) or hm.shape != want:
            raise TokenPoseError(
                f"{self.engine.name} engine returned heatmaps of shape {getattr(hm, 'shape', None)}, expected {want}"
            )
        hm = hm[:n]
        if not np.isfinite(hm).all():
            raise TokenPoseError(
                f"{self.engine.name} engine ({self.engine.precision}) returned non-finite heatmaps "
                "(NaN/Inf: an overflow in reduced precision?)"
            )
        return hm

    def predict_regions(
        self, images: Sequence[np.ndarray], image_index: np.ndarray, centers: np.ndarray, scales: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crops given directly as center/scale (the dataset's boxes): keypoints in image pixels.

        images: BGR uint8 (H, W, 3) arrays; image_index (N,) which image each crop comes from;
        centers (N, 2) pixels, scales (N, 2) units of 200 px.
        Returns keypoints (N, J, 2) float64 and maxvals (N, J, 1) float32.
        """
        inputs = self.crops(images, image_index, centers, scales)
        return self.codec.decode(self.heatmaps(inputs), centers, scales)

    def crops(self, images: Sequence[np.ndarray], image_index: np.ndarray, centers: np.ndarray,
              scales: np.ndarray) -> np.ndarray:
        """The model inputs (N, 3, H, W) float32 of the crops, in the order given: BGR uint8 images
        cropped, then normalised with the engine's mean/std into its colour order."""
        meta = self.meta
        inputs = np.empty((len(centers), 3, *meta.input_hw), dtype=np.float32)
        for i, image in enumerate(images):  # one warp batch per image
            sel = np.flatnonzero(image_index == i)
            if sel.size:
                inputs[sel] = preprocess_crops(image, centers[sel], scales[sel], meta.input_hw,
                                               mean_rgb=meta.mean_rgb, std_rgb=meta.std_rgb)
        if meta.color_order == "BGR":  # preprocess_crops returns RGB planes
            inputs = np.ascontiguousarray(inputs[:, ::-1])
        return inputs

    def predict(
        self,
        image: ImageLike | Sequence[ImageLike],
        boxes: np.ndarray | Sequence | Sequence[np.ndarray],
        box_scores: np.ndarray | Sequence | None = None,
        *,
        color: str = "bgr",
    ) -> PosePrediction | list[PosePrediction]:
        """Keypoints of the people in `boxes`.

        image: one image (a path, or a uint8 (H, W, 3) array in BGR order as `cv2.imread` returns)
        or a list of them. color: the channel order of array images, "bgr" (default) or "rgb"
        (PIL, imageio); an RGB array passed as BGR runs, but moves keypoints by a few pixels.
        boxes: (N, 4) `x, y, w, h` or (N, 5) `x, y, w, h, score` person boxes in that image's
        pixels, or a list of such arrays, one per image. box_scores: (N,) (or a list), default 1;
        none with (N, 5) boxes. Returns one PosePrediction, or a list for a list of images. All
        crops of all images share one batch (chunked at the engine's max batch). Raises
        InputShapeError for an image or boxes of another shape (None included).
        """
        if color not in COLORS:
            raise TokenPoseError(f"color must be 'bgr' or 'rgb', got {color!r}")
        single = image is None or isinstance(image, np.ndarray | str | os.PathLike)
        if not single and not isinstance(image, Sequence):
            raise InputShapeError(f"expected an image, a path or a list of them, got {type(image).__name__}")
        images = [image] if single else list(image)
        if not single and (boxes is None or isinstance(boxes, np.ndarray) or not isinstance(boxes, Sequence)):
            raise InputShapeError(f"{len(images)} images need a list of {len(images)} box arrays, "
                                  f"got {type(boxes).__name__}")
        box_lists = [boxes] if single else list(boxes)
        if box_scores is None:
            score_lists = [None] * len(images)
        else:
            score_lists = [box_scores] if single else list(box_scores)
        if len(box_lists) != len(images) or len(score_lists) != len(images):
            raise InputShapeError(f"got {len(images)} images but {len(box_lists)} box lists / {len(score_lists)} score lists")
        arrays = [as_bgr_image(im, color) for im in images]
        per_image = []
        for i, (arr, b, s) in enumerate(zip(arrays, box_lists, score_lists)):  # a loop: the warning's stacklevel
            per_image.append(self._usable(i, arr, b, s))
        results = self._predict_boxes(arrays, per_image)
        return results[0] if single else results

    @staticmethod
    def _usable(i: int, image: np.ndarray, boxes, box_scores) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(usable boxes (M, 4), their scores (M,), indices of the skipped ones) of image `i`."""
        b, s = as_boxes(boxes, box_scores, f"image {i}")
        ok = usable_boxes(b, image.shape[:2])
        skipped = np.flatnonzero(~ok).tolist()
        if skipped:
            shown = ", ".join(f"#{k} {np.round(b[k], 1).tolist()}" for k in skipped[:5])
            warnings.warn(
                f"image {i} ({image.shape[1]}x{image.shape[0]}): skipped {len(skipped)} box(es) with zero size, "
                f"non-finite values, outside the image or over {MAX_BOX_FACTOR:g}x its size: {shown}", stacklevel=3,
            )
        return b[ok], s[ok], skipped

    def _predict_boxes(self, arrays: list[np.ndarray], per_image: list) -> list[PosePrediction]:
        """Every usable box of every image in one batched pass; one PosePrediction per image."""
        boxes_all = np.concatenate([p[0] for p in per_image])
        image_index = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(per_image)]).astype(np.int64)
        centers, scales = box_to_center_scale(boxes_all, self.meta.aspect_ratio)
        centers, scales = centers.reshape(-1, 2), scales.reshape(-1, 2)
        if len(boxes_all):
            keypoints, maxvals = self.predict_regions(arrays, image_index, centers, scales)
        else:
            keypoints = np.zeros((0, self.meta.num_joints, 2))
            maxvals = np.zeros((0, self.meta.num_joints, 1), dtype=np.float32)
        results = []
        for i, (arr, (b, s, skipped)) in enumerate(zip(arrays, per_image)):
            sel = image_index == i
            results.append(PosePrediction(
                keypoints=keypoints[sel], scores=maxvals[sel][..., 0], boxes=b, box_scores=s,
                centers=centers[sel], scales=scales[sel], image_hw=tuple(arr.shape[:2]), skipped=skipped,
            ))
        return results
