"""The Engine protocol, the metadata every engine carries, and the suffix table that picks a backend.

An engine turns a float batch `(B, 3, H, W)` of normalised crops into heatmaps `(B, J, H/4, W/4)`,
both float32 numpy arrays on the host, and carries `meta` (an `EngineMeta`: sizes, joints, flip
pairs, mean/std, colour order, batch range, precision) read from the manifest it was built with, so
the predictor pre- and post-processes for the model it runs, not for a module constant.
Backends import their optional dependencies (onnxruntime, tensorrt, cuda-python) only inside
their own module, so `load_engine` on a `.pth` never needs them.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tokenpose.errors import InputShapeError, TokenPoseError
from tokenpose.keypoints import (
    COCO_FLIP_PAIRS,
    COCO_KEYPOINTS,
    MEAN_RGB,
    MPII_FLIP_PAIRS,
    MPII_KEYPOINTS,
    STD_RGB,
)
from tokenpose.manifest import Manifest, ManifestError
from tokenpose.models.config import VARIANTS, ModelConfig

COLOR_ORDERS = ("RGB", "BGR")
# dataset -> (keypoint names, flip pairs): the joint layouts the datasets and the evaluation know.
_LAYOUTS = {"coco": (COCO_KEYPOINTS, COCO_FLIP_PAIRS), "mpii": (MPII_KEYPOINTS, MPII_FLIP_PAIRS)}


@dataclass(frozen=True)
class EngineMeta:
    """What the model behind an engine takes and returns. Sizes are (H, W) in pixels.

    Input: (B, 3, *input_hw) float32, channels in `color_order`, each `(pixel / 255 - mean) / std`
    with `mean_rgb` / `std_rgb` given in RGB order. Output: (B, num_joints, *heatmap_hw) heatmaps
    (Gaussian targets of `sigma` heatmap pixels). One call takes min_batch <= B <= max_batch
    (None: no upper bound). The size/joint fields carry ModelConfig's names (`name`, `dataset`,
    `input_hw`, `heatmap_hw`, `num_joints`, `flip_pairs`, `sigma`, `aspect_ratio`), so the datasets
    and `HeatmapCodec.from_config` take an EngineMeta where they take a ModelConfig.
    """

    variant: str
    dataset: str  # "coco" or "mpii": the joint layout
    input_hw: tuple[int, int]
    heatmap_hw: tuple[int, int]
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigma: float
    precision: str  # "fp32", "fp16", "bf16", "int8"
    mean_rgb: tuple[float, float, float] = MEAN_RGB
    std_rgb: tuple[float, float, float] = STD_RGB
    color_order: str = "RGB"
    min_batch: int = 1
    max_batch: int | None = None

    def __post_init__(self) -> None:
        """Raises ValueError naming the first field that no model input or output can have."""
        for key in ("input_hw", "heatmap_hw"):
            hw = getattr(self, key)
            if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
                raise ValueError(f"{key} must be two positive integers (H, W), got {hw!r}")
        j = len(self.keypoint_names)
        if j < 1 or any(not (0 <= a < j and 0 <= b < j) for a, b in self.flip_pairs):
            raise ValueError(f"flip_pairs {self.flip_pairs} do not index the {j} joints")
        for key in ("mean_rgb", "std_rgb"):
            v = getattr(self, key)
            if len(v) != 3 or not all(isinstance(x, int | float) and math.isfinite(x) for x in v):
                raise ValueError(f"{key} must be three finite numbers (R, G, B), got {v!r}")
        if min(self.std_rgb) <= 0:
            raise ValueError(f"std_rgb must be positive, got {self.std_rgb!r}")
        if self.color_order not in COLOR_ORDERS:
            raise ValueError(f"color_order must be one of {', '.join(COLOR_ORDERS)}, got {self.color_order!r}")
        if self.min_batch < 1 or (self.max_batch is not None and self.max_batch < self.min_batch):
            raise ValueError(f"batch range {self.min_batch}..{self.max_batch} is empty")

    @property
    def name(self) -> str:
        """The variant, under ModelConfig's field name."""
        return self.variant

    @property
    def num_joints(self) -> int:
        return len(self.keypoint_names)

    @property
    def aspect_ratio(self) -> float:
        """Model input width / height, used to pad boxes before cropping."""
        return self.input_hw[1] / self.input_hw[0]

    @classmethod
    def from_config(cls, config: ModelConfig, *, precision: str, min_batch: int = 1,
                    max_batch: int | None = None) -> EngineMeta:
        """The metadata of a `.pth` model: its ModelConfig, ImageNet mean/std, RGB input."""
        return cls(
            variant=config.name, dataset=config.dataset, input_hw=tuple(config.input_hw),
            heatmap_hw=tuple(config.heatmap_hw), keypoint_names=tuple(config.keypoint_names),
            flip_pairs=tuple(map(tuple, config.flip_pairs)), sigma=float(config.sigma), precision=precision,
            min_batch=min_batch, max_batch=max_batch,
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, artifact: Path) -> EngineMeta:
        """The metadata of an exported artifact, read from its manifest and checked.

        The batch range is the manifest's (max 0: unbounded); a backend that finds another one in
        the artifact itself (a static batch, a TensorRT profile) replaces it (`dataclasses.replace`).
        Raises ManifestError naming `artifact` when the manifest contradicts its variant's table
        entry or its dataset's joint layout, or holds values no model can have.
        """
        table = VARIANTS.get(manifest.variant)
        if table is not None:
            want = {"input_hw": tuple(table.input_hw), "heatmap_hw": tuple(table.heatmap_hw),
                    "num_joints": table.num_joints}
            for key, value in want.items():
                got = getattr(manifest, key)
                got = tuple(got) if isinstance(got, list | tuple) else got
                if got != value:
                    raise ManifestError(f"{artifact}: manifest says {key}={got} but variant {table.name!r} "
                                        f"has {value}: mismatched manifest")
        batch = manifest.batch if isinstance(manifest.batch, Mapping) else {}
        try:
            min_batch = max(1, int(batch.get("min") or 1))
            max_batch = int(batch.get("max") or 0) or None
            meta = cls(
                variant=str(manifest.variant), dataset=str(manifest.dataset), input_hw=_int_pair(manifest.input_hw),
                heatmap_hw=_int_pair(manifest.heatmap_hw), keypoint_names=tuple(manifest.keypoint_names),
                flip_pairs=tuple(tuple(int(i) for i in p) for p in manifest.flip_pairs), sigma=float(manifest.sigma),
                precision=str(manifest.precision), mean_rgb=tuple(manifest.mean_rgb), std_rgb=tuple(manifest.std_rgb),
                color_order=str(manifest.color_order).upper(), min_batch=min_batch, max_batch=max_batch,
            )
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{artifact}: unusable manifest: {exc}") from None
        _check_layout(meta, manifest, artifact)
        return meta


def _int_pair(value: Any) -> tuple[int, ...]:
    """A JSON (H, W) pair as ints; a float or a string stays as it is, for __post_init__ to reject."""
    return tuple(int(v) if isinstance(v, int) or (isinstance(v, float) and v.is_integer()) else v for v in value)


def _check_layout(meta: EngineMeta, manifest: Manifest, artifact: Path) -> None:
    """The datasets, the evaluation and the drawing know the COCO and MPII joint layouts only."""
    layout = _LAYOUTS.get(meta.dataset)
    if layout is None:
        raise ManifestError(f"{artifact}: manifest dataset {meta.dataset!r} is neither 'coco' nor 'mpii'")
    names, pairs = layout
    if manifest.num_joints != meta.num_joints or meta.keypoint_names != names or set(meta.flip_pairs) != set(pairs):
        raise ManifestError(
            f"{artifact}: manifest says {manifest.num_joints} joints / flip pairs {list(map(list, meta.flip_pairs))}, "
            f"which is not the {meta.dataset!r} layout: mismatched manifest"
        )


@runtime_checkable
class Engine(Protocol):
    """What every backend provides."""

    name: str  # backend: "torch", "onnxruntime", "tensorrt", "aoti"
    precision: str  # "fp32", "fp16", "bf16", "int8"
    meta: EngineMeta  # what the model takes and returns (sizes, joints, mean/std, colour order, batch range)
    manifest: dict[str, Any]  # the manifest the artifact was built with, as JSON data
    min_batch: int  # smallest batch one call accepts (a TensorRT profile / AOTInductor / static-batch minimum)
    max_batch: int | None  # largest batch one call accepts (None: unlimited)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised crops -> (B, J, h, w) float32 heatmaps."""
        ...


# file suffix -> "module:factory"; the factory takes (path, **options) and returns an Engine.
BACKENDS: dict[str, str] = {
    ".pth": "tokenpose.engines.torch_engine:TorchEngine.from_file",
    ".onnx": "tokenpose.engines.onnx_engine:OnnxEngine.from_file",
    ".engine": "tokenpose.engines.tensorrt_engine:TensorRTEngine.from_file",
    ".pt2": "tokenpose.engines.aoti_engine:AotiEngine.from_file",
}


def load_engine(path: str | os.PathLike, **options: Any) -> Engine:
    """Open an artifact with the backend its suffix names (`.pth`, `.onnx`, `.engine`, `.pt2`)."""
    path = Path(path)
    target = BACKENDS.get(path.suffix.lower())
    if target is None:
        raise TokenPoseError(
            f"{path}: unknown engine file type {path.suffix!r}; expected one of {', '.join(BACKENDS)}"
        )
    if not path.is_file():
        raise TokenPoseError(f"{path}: engine file not found")
    module_name, factory = target.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in factory.split("."):
        obj = getattr(obj, part)
    return obj(path, **options)


def reject_options(unused: Mapping[str, Any], backend: str) -> None:
    """Options meant for other backends are ignored when None, an error otherwise."""
    given = sorted(k for k, v in unused.items() if v is not None)
    if given:
        raise TokenPoseError(f"option(s) {', '.join(given)} do not apply to the {backend} engine")


def check_precision(path: Path, manifest: Manifest, precision: str | None) -> None:
    """An exported artifact's precision is fixed: asking for another one is an error."""
    if precision is not None and precision != manifest.precision:
        raise TokenPoseError(
            f"{path} is a {manifest.precision} model; its precision cannot be changed to {precision} at load time "
            "(export a model in that precision)"
        )


def pad_batch(images: np.ndarray, min_batch: int) -> tuple[np.ndarray, int]:
    """`images` (B, ...) padded to at least `min_batch` rows by repeating its last row; returns
    (the batch to run, B): keep the first B rows of the result."""
    n = images.shape[0]
    if n >= min_batch or n == 0:
        return images, n
    filler = np.repeat(images[-1:], min_batch - n, axis=0)
    return np.concatenate([images, filler]), n


def check_engine_input(images: Any, meta: EngineMeta, engine: str) -> np.ndarray:
    """Validate an engine's input batch; return it as a C-contiguous float32 array.

    images: (B, 3, H, W) with (H, W) = meta.input_hw, 1 <= B <= meta.max_batch (when set).
    Raises InputShapeError naming the engine and what was expected, before any backend sees it.
    """
    if not isinstance(images, np.ndarray):
        raise InputShapeError(f"{engine} engine: expected a numpy array (B, 3, H, W), got {type(images).__name__}")
    h, w = meta.input_hw
    if images.ndim != 4 or images.shape[1:] != (3, h, w):
        raise InputShapeError(
            f"{engine} engine for variant {meta.variant!r}: expected input (B, 3, {h}, {w}), got {tuple(images.shape)}"
        )
    if images.shape[0] < 1:
        raise InputShapeError(f"{engine} engine: empty batch (B = 0)")
    if meta.max_batch is not None and images.shape[0] > meta.max_batch:
        raise InputShapeError(
            f"{engine} engine: batch {images.shape[0]} exceeds the engine's maximum batch {meta.max_batch} "
            "(split the batch or rebuild the engine with a larger batch range)"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise InputShapeError(f"{engine} engine: expected float32 normalised images, got dtype {images.dtype}")
    return np.ascontiguousarray(images, dtype=np.float32)


def micro_batch_size(value: int | str | None, auto: int | None) -> int | None:
    """An engine's `micro_batch` option as a slice size (None: whole batches).

    "auto" gives the engine's own default `auto`; None or 0 mean whole batches; else an int >= 1.
    """
    if value == "auto":
        return auto
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TokenPoseError(f"micro_batch must be 'auto', None or an integer >= 1, got {value!r}")
    return value


def in_slices(run: Callable[[Any], Any], batch: Any, step: int | None) -> list:
    """`run` on consecutive slices of at most `step` images of `batch` (all of it when step is None)."""
    step = step or len(batch)
    return [run(batch[i:i + step]) for i in range(0, len(batch), step)]
