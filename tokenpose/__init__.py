"""tokenpose: the TokenPose human-pose model from training to production."""

from __future__ import annotations

from tokenpose.engines import PosePrediction, PosePredictor, load_engine
from tokenpose.models import ModelConfig, TokenPose, create_model, list_variants

__version__ = "0.1.0"

__all__ = [
    "ModelConfig",
    "PosePrediction",
    "PosePredictor",
    "TokenPose",
    "__version__",
    "create_model",
    "list_variants",
    "load_engine",
]
