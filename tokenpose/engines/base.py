"""The Engine protocol and the suffix table that picks a backend for a file.

An engine turns a float batch `(B, 3, H, W)` of normalised RGB crops into heatmaps
`(B, J, H/4, W/4)`, both float32 numpy arrays on the host, and carries the manifest
(variant, sizes, mean/std, flip pairs, precision, batch range) it was built from.
Backends import their optional dependencies (onnxruntime, tensorrt, cuda-python) only inside
their own module, so `load_engine` on a `.pth` never needs them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tokenpose.errors import TokenPoseError
from tokenpose.models.config import ModelConfig


@runtime_checkable
class Engine(Protocol):
    """What every backend provides."""

    name: str  # backend: "torch", "onnxruntime", "tensorrt"
    precision: str  # "fp32", "fp16", "bf16", "int8"
    config: ModelConfig  # the variant (input/heatmap sizes, joints, flip pairs)
    manifest: dict[str, Any]  # the manifest the artifact was built with
    max_batch: int | None  # largest batch one call accepts (None: unlimited)
    # Optional (not part of the runtime protocol check): the smallest batch one call accepts,
    # default 1. TensorRT engines (profile minimum), AOTInductor packages (manifest batch min) and
    # static-batch ONNX models (the fixed batch) set it; read it with `engine_min_batch(engine)`.
    # min_batch: int

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps."""
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


def engine_min_batch(engine: Any) -> int:
    """The smallest batch `engine` accepts: its optional `min_batch` attribute, else 1."""
    value = getattr(engine, "min_batch", None)
    try:
        return max(1, int(value)) if value is not None else 1
    except (TypeError, ValueError):
        raise TokenPoseError(f"{getattr(engine, 'name', 'engine')} engine has an invalid min_batch {value!r}") from None


def pad_batch(images: np.ndarray, min_batch: int) -> tuple[np.ndarray, int]:
    """`images` (B, ...) padded to at least `min_batch` rows by repeating its last row; returns
    (the batch to run, B): keep the first B rows of the result."""
    n = images.shape[0]
    if n >= min_batch or n == 0:
        return images, n
    filler = np.repeat(images[-1:], min_batch - n, axis=0)
    return np.concatenate([images, filler]), n


def check_engine_input(images: Any, config: ModelConfig, max_batch: int | None, engine: str) -> np.ndarray:
    """Validate an engine's input batch; return it as a C-contiguous float32 array.

    images: (B, 3, H, W) with (H, W) = config.input_hw, 1 <= B <= max_batch (when set).
    Raises InputShapeError naming the engine and what was expected, before any backend sees it.
    """
    from tokenpose.errors import InputShapeError

    if not isinstance(images, np.ndarray):
        raise InputShapeError(f"{engine} engine: expected a numpy array (B, 3, H, W), got {type(images).__name__}")
    h, w = config.input_hw
    if images.ndim != 4 or images.shape[1:] != (3, h, w):
        raise InputShapeError(
            f"{engine} engine for variant {config.name!r}: expected input (B, 3, {h}, {w}), got {tuple(images.shape)}"
        )
    if images.shape[0] < 1:
        raise InputShapeError(f"{engine} engine: empty batch (B = 0)")
    if max_batch is not None and images.shape[0] > max_batch:
        raise InputShapeError(
            f"{engine} engine: batch {images.shape[0]} exceeds the engine's maximum batch {max_batch} "
            "(split the batch or rebuild the engine with a larger batch range)"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise InputShapeError(f"{engine} engine: expected float32 normalised images, got dtype {images.dtype}")
    return np.ascontiguousarray(images, dtype=np.float32)
