"""TensorRT engine builder (TensorRT 10+ Python API). `tensorrt` is imported only inside functions.

`build_engine` parses an FP32/FP16/INT8 ONNX model into a **strongly typed** network where the
installed TensorRT offers it (precision then comes from the ONNX types: the FP16 model's float16
tensors, the INT8 model's Q/DQ nodes; no precision builder flags are set). Older TensorRT falls back
to a weakly typed network with the FP16/INT8 builder flags. One optimisation profile covers the
batch range (min/opt/max), the workspace pool is limited, a timing cache file is read before and
written (atomically) after each build so later builds reuse it, and the built engine is inspected
(`ProfilingVerbosity.DETAILED`, JSON layer information) to report the precision each layer runs
in, so that a silent FP32 fallback is visible. Failures raise `TensorRTError` carrying the
TensorRT log; nothing here exits the process.

The parts that need no GPU (`profile_shapes`, `summarize_layer_precisions`, timing-cache file
handling) are plain Python and tested on CPU.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenpose.cuda import gpu_name
from tokenpose.errors import TokenPoseError
from tokenpose.files import atomic_write
from tokenpose.manifest import BatchRange

__all__ = [
    "EngineBuildResult",
    "TensorRTError",
    "build_engine",
    "layer_datatype",
    "profile_shapes",
    "summarize_layer_precisions",
    "tensorrt_unavailable_reason",
    "use_timing_cache",
]


class TensorRTError(TokenPoseError):
    """A TensorRT step failed; `log` holds the TensorRT messages recorded during it."""

    def __init__(self, message: str, log: Sequence[str] = ()) -> None:
        self.log = list(log)
        tail = "\n".join(self.log[-40:])
        super().__init__(message + (f"\nTensorRT log (last {min(40, len(self.log))} lines):\n{tail}" if tail else ""))


def tensorrt_unavailable_reason() -> str | None:
    """None when `import tensorrt` works, else a one-line reason."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install tensorrt on a machine with an NVIDIA GPU)"
    except Exception as exc:  # noqa: BLE001 - a broken install: missing CUDA libraries raise OSError etc.
        return f"tensorrt cannot be imported: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def profile_shapes(batch: BatchRange, input_hw: tuple[int, int], channels: int = 3) -> dict[str, tuple[int, ...]]:
    """The optimisation profile of `images`: {"min", "opt", "max"} -> (B, C, H, W)."""
    h, w = input_hw
    return {k: (b, channels, h, w) for k, b in (("min", batch.min), ("opt", batch.opt), ("max", batch.max))}


_DATATYPE_WORDS = (  # substring of the inspector's "Format/Datatype" -> precision; first match wins
    # both spellings: DETAILED formats ("Row major linear FP32", "Channel major FP16 format where
    # channel % 8 == 0", "Row major linear Int8") and bare datatypes ("Float", "Half", "Int8", "BFloat16")
    ("fp8", "fp8"), ("int8", "int8"), ("int4", "int4"), ("fp4", "fp4"), ("bf16", "bf16"), ("bfloat16", "bf16"),
    ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"),
    ("int32", "int32"), ("int64", "int64"), ("uint8", "uint8"), ("bool", "bool"),
)
# Float precisions from lowest to highest: a layer computes in the lowest one it touches.
_FLOAT_RANK = {"int4": 0, "fp4": 0, "fp8": 1, "int8": 1, "fp16": 2, "bf16": 2, "fp32": 3}
# Layer types whose precision decides speed; a reduced-precision engine should not run them in FP32.
_COMPUTE_WORDS = ("conv", "matrixmultiply", "gemm", "matmul", "fullyconnected", "attention")
# TensorRT 10 hands whole subgraphs (the transformer blocks) to Myelin: one layer per fused region,
# LayerType "Myelin" (older: "ForeignNode"), named "{ForeignNode[first_op...last_op]}". The
# inspector shows only the region's boundary tensors, whose datatypes (often the FP32 network input,
# or a Cast's input) say nothing about the precision of the kernels inside.
_FUSED_WORDS = ("myelin", "foreignnode", "foreign")
# Layers that only change a tensor's layout or type.
_REFORMAT_TYPES = ("reformat", "cast", "noop", "no-op", "identity")


def layer_datatype(tensor_info: dict | str) -> str:
    """Precision word ('fp32', 'fp16', 'int8', ...) of one inspector tensor entry, or 'unknown'."""
    text = tensor_info if isinstance(tensor_info, str) else str(tensor_info.get("Format/Datatype", ""))
    low = text.lower().replace(" ", "")
    for word, precision in _DATATYPE_WORDS:
        if word in low:
            return precision
    return "unknown"


def _layer_role(name: str, kind: str) -> str:
    """'fused' (Myelin/ForeignNode), 'reformat' (reformat/cast/no-op), 'compute' or 'other'."""
    low_kind, low_name = kind.lower(), name.lower()
    if any(w in low_kind for w in _FUSED_WORDS) or "foreignnode" in low_name:
        return "fused"
    if low_kind in _REFORMAT_TYPES or low_kind.startswith("reformat") or low_name.startswith("reformatting copynode"):
        return "reformat"
    if any(w in low_kind for w in _COMPUTE_WORDS):
        return "compute"
    return "other"


def _layer_precision(tensors: list) -> str:
    """The precision a layer runs in, from the datatypes of all its inputs and outputs: the lowest
    float precision among them (an INT8 convolution may take Int8 and give FP32; an FP16 layer
    next to the FP32 network input may take FP32 and give Half); 'unknown' without float tensors
    (index/shape tensors only, or no datatypes)."""
    kinds = [layer_datatype(t) for t in tensors if isinstance(t, dict | str)]
    floats = [k for k in kinds if k in _FLOAT_RANK]
    if floats:
        return min(floats, key=lambda k: _FLOAT_RANK[k])
    known = [k for k in kinds if k != "unknown"]
    return known[0] if known else "unknown"


def summarize_layer_precisions(engine_info: str | dict, requested: str) -> dict:
    """Summarise `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)` for an
    engine built as `requested`.

    The JSON is `{"Layers": [{"Name", "LayerType", "Inputs": [{"Name", "Location", "Dimensions",
    "Format/Datatype"}], "Outputs": [...], ...}], "Bindings": [...]}` (names only below DETAILED
    verbosity). Each layer is classified by all its inputs and outputs (`_layer_precision`) and by
    its role: Myelin/ForeignNode layers are reported as 'fused' (their boundary tensors do not show
    the precision inside), reformat/cast/no-op layers as data movement, convolutions/matmuls as
    compute. Returns {"layers", "by_precision", "compute_layers", "compute_layers_fp32",
    "fused_layers", "reformat_layers", "fallback", "message"}: `fallback` is True when a
    reduced-precision engine ("fp16"/"int8") runs none of its (unfused) compute layers in that
    precision or lower, or runs more than half of them in FP32. Fused layers never count as fallback.
    """
    data = json.loads(engine_info) if isinstance(engine_info, str) else engine_info
    layers = data.get("Layers", []) if isinstance(data, dict) else data
    rows, counts = [], Counter()
    for layer in layers or []:
        if isinstance(layer, str):  # ProfilingVerbosity below DETAILED gives names only
            role = "fused" if "foreignnode" in layer.lower() else "unknown"
            rows.append({"name": layer, "type": "unknown", "role": role,
                         "precision": "fused" if role == "fused" else "unknown"})
            counts[rows[-1]["precision"]] += 1
            continue
        if not isinstance(layer, dict):
            continue
        name = str(layer.get("Name", "?"))
        kind = str(layer.get("LayerType", layer.get("ParameterType", "unknown")))
        role = _layer_role(name, kind)
        tensors = list(layer.get("Inputs") or []) + list(layer.get("Outputs") or [])
        precision = _layer_precision(tensors)
        row = {"name": name, "type": kind, "role": role, "precision": precision}
        if role == "fused":
            row["tensor_precisions"] = sorted({layer_datatype(t) for t in tensors if isinstance(t, dict | str)})
        rows.append(row)
        counts["fused" if role == "fused" else precision] += 1
    compute = [r for r in rows if r["role"] == "compute"]
    fused = [r for r in rows if r["role"] == "fused"]
    reformat = [r for r in rows if r["role"] == "reformat"]
    fp32_compute = [r["name"] for r in compute if r["precision"] == "fp32"]
    fallback = False
    fused_note = (f"; {len(fused)} fused Myelin/ForeignNode layer(s), whose inner precision the inspector "
                  "does not show" if fused else "")
    if requested in ("fp16", "int8", "bf16", "fp8") and compute:
        limit = _FLOAT_RANK.get(requested, 3)
        in_requested = [r for r in compute if _FLOAT_RANK.get(r["precision"], 99) <= limit]
        if not in_requested:
            fallback = True
            message = f"no compute layer runs in {requested}: the engine silently fell back to higher precision"
        elif len(fp32_compute) > len(compute) / 2:
            fallback = True
            message = f"{len(fp32_compute)} of {len(compute)} compute layers run in fp32 in a {requested} engine"
        else:
            message = f"{len(in_requested)} of {len(compute)} compute layers run in {requested} or lower"
        message += fused_note
    elif compute or fused:
        message = (f"{len(compute)} compute layer(s) checked" if compute else "no unfused compute layer") + fused_note
    else:
        message = "no per-layer precision information (engine not built with DETAILED profiling?)"
    return {"layers": len(rows), "by_precision": dict(counts), "compute_layers": len(compute),
            "compute_layers_fp32": fp32_compute, "fused_layers": len(fused), "reformat_layers": len(reformat),
            "fallback": fallback, "message": message}


def read_timing_cache(path: str | os.PathLike | None) -> bytes:
    """Bytes of an existing timing cache file, or b'' (a new cache)."""
    if path is None or not Path(path).is_file():
        return b""
    return Path(path).read_bytes()


def write_timing_cache(path: str | os.PathLike, data: bytes) -> None:
    """Write a serialized timing cache atomically (a build interrupted mid-write keeps the old one)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def use_timing_cache(config, data: bytes, path: str | os.PathLike | None, log: list[str] | None = None):
    """Give the builder `config` the timing cache read from `path` (`data`, b'' for none).

    A cache written by another TensorRT version or for another GPU does not fit (TensorRT refuses it
    or cannot even parse it): then the build starts from a fresh, empty cache with a warning (and the
    build rewrites the file), instead of failing. Returns the cache set on `config`.
    """
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # noqa: BLE001 - TensorRT raises its own errors for unparseable bytes
            cache = None
        if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
            cache = None
        if cache is None:
            message = (f"timing cache {path} does not fit this TensorRT version / GPU: starting a fresh cache "
                       "(it is rewritten after the build)")
            warnings.warn(message, stacklevel=3)
            if log is not None:
                log.append(f"[WARNING] {message}")
    if cache is None:
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise TensorRTError("TensorRT cannot create an empty timing cache", log or ())
    return cache


@dataclass
class EngineBuildResult:
    """What `build_engine` made: the serialized engine and what the inspector saw."""

    engine: bytes
    strongly_typed: bool
    precision: str
    profile: dict[str, tuple[int, ...]]
    layer_precisions: dict
    tensorrt_version: str
    gpu: str | None
    build_seconds: float
    timing_cache: str | None
    log: list[str] = field(default_factory=list)


def build_engine(
    onnx_path: str | os.PathLike,
    *,
    precision: str,
    batch: BatchRange,
    input_hw: tuple[int, int],
    input_name: str = "images",
    workspace_bytes: int = 4 << 30,
    timing_cache: str | os.PathLike | None = None,
    strongly_typed: bool = True,
) -> EngineBuildResult:
    """Build a serialized TensorRT engine from an ONNX model with a dynamic batch axis.

    precision: what the ONNX model holds ("fp32", "fp16" or "int8" Q/DQ); with a strongly typed
    network it only labels the result and selects the fallback check; with a weakly typed one
    (TensorRT without STRONGLY_TYPED, or `strongly_typed=False`) it sets the FP16/INT8 flags.
    batch: the one optimisation profile; workspace_bytes: WORKSPACE pool limit; timing_cache:
    file read before and rewritten after the build. Raises TensorRTError with the log.
    """
    import time

    import tensorrt as trt

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.lines.append(f"[{str(severity).split('.')[-1]}] {msg}")

    logger = _Logger()
    start = time.perf_counter()
    builder = trt.Builder(logger)
    if builder is None:
        raise TensorRTError("cannot create a TensorRT builder (no CUDA device?)", logger.lines)
    has_strong = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    use_strong = strongly_typed and has_strong
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if use_strong else 0
    if not use_strong and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # required before TRT 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else 'unknown error'}",
                            errors + logger.lines)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not use_strong:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit (Q/DQ) quantization, no calibrator

    shapes = profile_shapes(batch, input_hw)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    use_timing_cache(config, read_timing_cache(timing_cache), timing_cache, logger.lines)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path}", logger.lines)
    engine_bytes = bytes(serialized)
    if timing_cache is not None:
        write_timing_cache(timing_cache, bytes(config.get_timing_cache().serialize()))

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise TensorRTError("the engine just built cannot be deserialized", logger.lines)
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    layers = summarize_layer_precisions(info, precision)
    return EngineBuildResult(
        engine=engine_bytes, strongly_typed=use_strong, precision=precision, profile=shapes,
        layer_precisions=layers, tensorrt_version=str(trt.__version__), gpu=gpu_name(),
        build_seconds=time.perf_counter() - start,
        timing_cache=None if timing_cache is None else str(timing_cache), log=logger.lines,
    )
