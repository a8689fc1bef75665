"""Engines: one protocol over PyTorch, ONNX Runtime and TensorRT; the batched PosePredictor.

Backends are imported lazily through the suffix table in `base.BACKENDS`, so importing this
package never needs onnxruntime or tensorrt.
"""

from tokenpose.engines.base import BACKENDS, Engine, EngineMeta, load_engine
from tokenpose.engines.predictor import PosePrediction, PosePredictor

__all__ = ["BACKENDS", "Engine", "EngineMeta", "PosePrediction", "PosePredictor", "load_engine"]
