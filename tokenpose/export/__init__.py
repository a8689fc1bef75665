"""Export: ONNX (dynamic batch, self-verified), FP16 / INT8 Q/DQ models, TensorRT engines, manifests.

`export_model(ExportOptions(...))` runs the whole pipeline of `tokenpose-export`; the modules hold
the steps: `onnx` (export and verification), `precision` (FP16, INT8 for CPU and GPU),
`calibration` (real crops), `aoti` (AOTInductor packages) and `tensorrt` (engine builder, imports
tensorrt lazily); the manifests come from `tokenpose.manifest`.
"""

from tokenpose.export.calibration import (
    CalibrationError,
    CalibrationSet,
    load_calibration_set,
)
from tokenpose.manifest import (
    BatchRange,
    Manifest,
    ManifestError,
    manifest_path,
    read_manifest,
    verify_manifest,
)
from tokenpose.export.onnx import (
    ExportError,
    check_graph,
    export_onnx_model,
    verify_against_torch,
)
from tokenpose.export.pipeline import ExportOptions, ExportSummary, export_model
from tokenpose.export.precision import Int8Settings, convert_fp16, int8_on_fp16, quantize_int8

__all__ = [
    "BatchRange",
    "CalibrationError",
    "CalibrationSet",
    "ExportError",
    "ExportOptions",
    "ExportSummary",
    "Int8Settings",
    "Manifest",
    "ManifestError",
    "check_graph",
    "convert_fp16",
    "export_model",
    "export_onnx_model",
    "int8_on_fp16",
    "load_calibration_set",
    "manifest_path",
    "quantize_int8",
    "read_manifest",
    "verify_against_torch",
    "verify_manifest",
]
