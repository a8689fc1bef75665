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

import contextlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenpose.errors import TokenPoseError
from tokenpose.export.manifest import BatchRange
from tokenpose.files import atomic_write

__all__ = [
    "EngineBuildResult",
    "TensorRTError",
    "build_engine",
    "gpu_name",
    "layer_datatype",
    "profile_shapes",
    "summarize_layer_precisions",
    "tensorrt_unavailable_reason",
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


def gpu_name(device: int = 0) -> str | None:
    """Name of CUDA device `device` (torch, else cuda-python), or None without a GPU."""
    with contextlib.suppress(Exception):  # torch without CUDA, or a driver problem: try cuda-python
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(device)
    with contextlib.suppress(Exception):  # cuda-python absent or no device
        from cuda import cudart

        err, props = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = props.name
            return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")
    return None


def profile_shapes(batch: BatchRange, input_hw: tuple[int, int], channels: int = 3) -> dict[str, tuple[int, ...]]:
    """The optimisation profile of `images`: {"min", "opt", "max"} -> (B, C, H, W)."""
    h, w = input_hw
    return {k: (b, channels, h, w) for k, b in (("min", batch.min), ("opt", batch.opt), ("max", batch.max))}


_DATATYPE_WORDS = (  # substring of the inspector's "Format/Datatype" -> precision; first match wins
    ("fp8", "fp8"), ("int8", "int8"), ("int4", "int4"), ("fp4", "fp4"), ("bf16", "bf16"),
    ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"),
    ("int32", "int32"), ("int64", "int64"), ("bool", "bool"),
)
# Layer types whose precision decides speed; a reduced-precision engine should not run them in FP32.
_COMPUTE_WORDS = ("conv", "matrixmultiply", "gemm", "matmul", "fullyconnected", "myelin", "foreign")


def layer_datatype(tensor_info: dict | str) -> str:
    """Precision word ('fp32', 'fp16', 'int8', ...) of one inspector tensor entry, or 'unknown'."""
    text = tensor_info if isinstance(tensor_info, str) else str(tensor_info.get("Format/Datatype", ""))
    low = text.lower().replace(" ", "")
    for word, precision in _DATATYPE_WORDS:
        if word in low:
            return precision
    return "unknown"


def summarize_layer_precisions(engine_info: str | dict, requested: str) -> dict:
    """Summarise `IEngineInspector.get_engine_information(JSON)` for an engine built as `requested`.

    Each layer's precision is the datatype of its first input (what its kernel consumes).
    Returns {"layers", "by_precision", "compute_layers_fp32", "fallback", "message"}: `fallback`
    is True when a reduced-precision engine ("fp16"/"int8") runs none of its compute layers
    (convolutions, matmuls, Myelin/foreign nodes) in that precision, or when more than half of them
    run in FP32.
    """
    data = json.loads(engine_info) if isinstance(engine_info, str) else engine_info
    layers = data.get("Layers", []) if isinstance(data, dict) else data
    rows, counts = [], Counter()
    for layer in layers:
        if isinstance(layer, str):  # ProfilingVerbosity below DETAILED gives names only
            rows.append({"name": layer, "type": "unknown", "precision": "unknown"})
            counts["unknown"] += 1
            continue
        inputs = layer.get("Inputs") or []
        precision = layer_datatype(inputs[0]) if inputs else "unknown"
        kind = str(layer.get("LayerType", layer.get("ParameterType", "unknown")))
        rows.append({"name": layer.get("Name", "?"), "type": kind, "precision": precision})
        counts[precision] += 1
    compute = [r for r in rows if any(w in r["type"].lower() for w in _COMPUTE_WORDS)]
    fp32_compute = [r["name"] for r in compute if r["precision"] == "fp32"]
    fallback, message = False, "all compute layers checked"
    if requested in ("fp16", "int8") and compute:
        in_requested = [r for r in compute if r["precision"] == requested]
        if not in_requested:
            fallback = True
            message = f"no compute layer runs in {requested}: the engine silently fell back to higher precision"
        elif len(fp32_compute) > len(compute) / 2:
            fallback = True
            message = f"{len(fp32_compute)} of {len(compute)} compute layers run in fp32 in a {requested} engine"
        else:
            message = f"{len(in_requested)} of {len(compute)} compute layers run in {requested}"
    elif not compute:
        message = "no per-layer precision information (engine not built with DETAILED profiling?)"
    return {"layers": len(rows), "by_precision": dict(counts), "compute_layers": len(compute),
            "compute_layers_fp32": fp32_compute, "fallback": fallback, "message": message}


def read_timing_cache(path: str | os.PathLike | None) -> bytes:
    """Bytes of an existing timing cache file, or b'' (a new cache)."""
    if path is None or not Path(path).is_file():
        return b""
    return Path(path).read_bytes()


def write_timing_cache(path: str | os.PathLike, data: bytes) -> None:
    """Write a serialized timing cache atomically (a build interrupted mid-write keeps the old one)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


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

    cache = config.create_timing_cache(read_timing_cache(timing_cache))
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise TensorRTError(f"timing cache {timing_cache} does not fit this TensorRT/GPU; delete it", logger.lines)

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
