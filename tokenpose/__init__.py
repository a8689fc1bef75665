"""tokenpose: the TokenPose human-pose model from training to production.

The public names load their module on first use (PEP 562), so `import tokenpose` (and with it
every `tokenpose.<sub>` import, and `tokenpose --help`) does not import torch, cv2 or onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ModelConfig": "tokenpose.models",
    "TokenPose": "tokenpose.models",
    "create_model": "tokenpose.models",
    "list_variants": "tokenpose.models",
    "PosePrediction": "tokenpose.engines",
    "PosePredictor": "tokenpose.engines",
    "load_engine": "tokenpose.engines",
    "load_detector": "tokenpose.predict.detectors",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from tokenpose.engines import PosePrediction, PosePredictor, load_engine
    from tokenpose.models import ModelConfig, TokenPose, create_model, list_variants
    from tokenpose.predict.detectors import load_detector


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tokenpose' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
