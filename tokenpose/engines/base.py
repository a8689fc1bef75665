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

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps."""
        ...


# file suffix -> "module:factory"; the factory takes (path, **options) and returns an Engine.
BACKENDS: dict[str, str] = {
    ".pth": "tokenpose.engines.torch_engine:TorchEngine.from_file",
    ".onnx": "tokenpose.engines.onnx_engine:OnnxEngine.from_file",
    ".engine": "tokenpose.engines.tensorrt_engine:TensorRTEngine.from_file",
}


def load_engine(path: str | os.PathLike, **options: Any) -> Engine:
    """Open an artifact with the backend its suffix names (`.pth`, `.onnx`, `.engine`)."""
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
