"""TensorRT engine builder (TensorRT 10 and 11 Python API). `tensorrt` is imported only inside functions.

`build_engine` parses an FP32/FP16/INT8 ONNX model into a **strongly typed** network: precision
comes from the ONNX types (the FP16 model's float16 tensors, the INT8 model's Q/DQ nodes), and no
precision builder flag is set. TensorRT 10 can still build a weakly typed network with the FP16/INT8
flags (`strongly_typed=False`; the flags are deprecated since 10.12); TensorRT 11 removed them and
builds strongly typed networks only, so there `strongly_typed=False` is refused. TF32 is cleared
unless asked for (`tf32=True`): TensorRT enables it by default, and an "FP32" engine should compute
in FP32. One optimisation profile covers the batch range (min/opt/max), the workspace pool is
limited, a timing cache file is read before and written (atomically) after each build so later
builds reuse it, and the built engine is inspected (`ProfilingVerbosity.DETAILED`, JSON layer
information, TensorRT 10 and 11 schemas) to report the precision each layer runs in, so that a
silent FP32 fallback is visible. Failures raise `TensorRTError` carrying the TensorRT log; nothing
here exits the process.

The parts that need no GPU (`profile_shapes`, `summarize_layer_precisions`, `network_is_strongly_typed`,
timing-cache file handling) are plain Python and tested on CPU.
"""

from __future__ import annotations

import json
import os
import re
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
    "network_is_strongly_typed",
    "profile_shapes",
    "summarize_layer_precisions",
    "tensorrt_major",
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


_DATATYPE_WORDS = (  # substring of an inspector datatype/format text -> precision; first match wins
    # both spellings: DETAILED formats ("Row major linear FP32", "Channel major FP16 format where
    # channel % 8 == 0", "Row major linear Int8") and bare datatypes ("Float", "Half", "Int8", "BFloat16");
    # "uint8" before "int8", which it contains
    ("uint8", "uint8"), ("fp8", "fp8"), ("int8", "int8"), ("int4", "int4"), ("fp4", "fp4"), ("bf16", "bf16"),
    ("bfloat16", "bf16"), ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"),
    ("int32", "int32"), ("int64", "int64"), ("bool", "bool"),
)
# Where a tensor entry names its type: TensorRT 10 writes one "Format/Datatype" text; TensorRT 11
# (and NVIDIA's inspector schema) separate "Format" and "DataType". The bare datatype is the surest.
_DATATYPE_KEYS = ("DataType", "Datatype", "Format/Datatype", "Format/DataType", "Format")
# Float precisions from lowest to highest: a layer computes in the lowest one it touches.
_FLOAT_RANK = {"int4": 0, "fp4": 0, "fp8": 1, "int8": 1, "fp16": 2, "bf16": 2, "fp32": 3}
_REDUCED = ("fp16", "int8", "bf16", "fp8")
# Layer-type words (normalised: lower case, no spaces/underscores/dashes) of layers whose precision
# decides speed: "Convolution", "CaskConvolution", "MatrixMultiply" / "matrix_multiply", "gemm" (what
# TensorRT >= 10.8 calls Myelin's matmul kernels), "FullyConnected", "attention".
_COMPUTE_WORDS = ("conv", "matrixmultiply", "gemm", "matmul", "fullyconnected", "attention")
# TensorRT 10 hands whole subgraphs (the transformer blocks) to Myelin: one layer per fused region,
# LayerType "Myelin" (older: "ForeignNode"), named "{ForeignNode[first_op...last_op]}". The
# inspector shows only the region's boundary tensors, whose datatypes (often the FP32 network input,
# or a Cast's input) say nothing about the precision of the kernels inside.
_FUSED_WORDS = ("myelin", "foreignnode", "foreign")
# Layers that only change a tensor's layout or type.
_REFORMAT_TYPES = ("reformat", "cast", "noop", "identity")


def _normalized(word: str) -> str:
    """'Matrix_Multiply' / 'matrix multiply' / 'no-op' -> 'matrixmultiply' / 'noop'."""
    return re.sub(r"[\s_\-]", "", word.lower())


def layer_datatype(tensor_info: dict | str) -> str:
    """Precision word ('fp32', 'fp16', 'int8', ...) of one inspector tensor entry, or 'unknown'.

    Reads the TensorRT 11 "DataType" key first, then TensorRT 10's "Format/Datatype", then "Format"."""
    if isinstance(tensor_info, str):
        texts = [tensor_info]
    else:
        texts = [str(tensor_info[k]) for k in _DATATYPE_KEYS if tensor_info.get(k)]
    for text in texts:
        low = text.lower().replace(" ", "")
        for word, precision in _DATATYPE_WORDS:
            if word in low:
                return precision
    return "unknown"


def _layer_role(name: str, kind: str) -> str:
    """'fused' (Myelin/ForeignNode), 'reformat' (reformat/cast/no-op), 'compute' or 'other'."""
    kind_n, name_n = _normalized(kind), _normalized(name)
    if any(w in kind_n for w in _FUSED_WORDS) or "foreignnode" in name_n:
        return "fused"
    if kind_n in _REFORMAT_TYPES or kind_n.startswith("reformat") or name_n.startswith("reformattingcopynode"):
        return "reformat"
    if any(w in kind_n for w in _COMPUTE_WORDS):
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


def _layer_rows(layers: list) -> list[dict]:
    """One {"name", "type", "role", "precision"} per inspector layer (names only below DETAILED)."""
    rows = []
    for layer in layers or []:
        if isinstance(layer, str):
            fused = "foreignnode" in _normalized(layer)
            rows.append({"name": layer, "type": "unknown", "role": "fused" if fused else "unknown",
                         "precision": "fused" if fused else "unknown"})
            continue
        if not isinstance(layer, dict):
            continue
        name = str(layer.get("Name", "?"))
        kind = str(layer.get("LayerType", layer.get("ParameterType", "unknown")))
        tensors = list(layer.get("Inputs") or []) + list(layer.get("Outputs") or [])
        row = {"name": name, "type": kind, "role": _layer_role(name, kind), "precision": _layer_precision(tensors)}
        if row["role"] == "fused":
            row["tensor_precisions"] = sorted({layer_datatype(t) for t in tensors if isinstance(t, dict | str)})
        rows.append(row)
    return rows


def _verdict(compute: list[dict], requested: str, fused_note: str, detailed: bool) -> tuple[str, str]:
    """(status, message): status "ok", "fallback" (a reduced-precision engine runs its compute in
    higher precision) or "unknown" (no compute layer recognised, or none with a known datatype)."""
    known = [r for r in compute if r["precision"] in _FLOAT_RANK]
    if not detailed:
        return "unknown", "no per-layer precision information (engine not built with DETAILED profiling?)"
    if not compute:
        return "unknown", "no compute layer recognised: precision unknown" + fused_note
    if not known:
        return "unknown", (f"the inspector gives no datatype for the {len(compute)} compute layer(s): "
                           "precision unknown" + fused_note)
    if requested not in _REDUCED:
        return "ok", f"{len(compute)} compute layer(s) checked" + fused_note
    limit = _FLOAT_RANK[requested]
    in_requested = [r for r in known if _FLOAT_RANK[r["precision"]] <= limit]
    fp32 = [r for r in known if r["precision"] == "fp32"]
    if not in_requested:
        return "fallback", (f"no compute layer runs in {requested}: the engine silently fell back to higher "
                            "precision" + fused_note)
    if len(fp32) > len(known) / 2:
        return "fallback", f"{len(fp32)} of {len(known)} compute layers run in fp32 in a {requested} engine" + fused_note
    return "ok", f"{len(in_requested)} of {len(known)} compute layers run in {requested} or lower" + fused_note


def summarize_layer_precisions(engine_info: str | dict, requested: str) -> dict:
    """Summarise `IEngineInspector.get_engine_information(LayerInformationFormat.JSON)` for an
    engine built as `requested`.

    TensorRT 10: `{"Layers": [{"Name", "LayerType", "Inputs": [{"Name", "Location", "Dimensions",
    "Format/Datatype"}], "Outputs": [...], ...}], "Bindings": [names]}`; TensorRT 11 splits each
    tensor's "Format/Datatype" into "Format" and "DataType" and replaces "Bindings" by "I/O Tensors"
    (objects); names only below DETAILED verbosity. Both give the same summary. Each layer is
    classified by all its inputs and outputs (`_layer_precision`) and by its (normalised) layer type:
    Myelin/ForeignNode layers are 'fused' (their boundary tensors do not show the precision inside),
    reformat/cast/no-op layers data movement, convolutions/matmuls/gemms compute. Returns {"layers",
    "by_precision", "compute_layers", "compute_layers_fp32", "fused_layers", "reformat_layers",
    "status", "fallback", "message"}: `status` is "ok", "fallback" or "unknown" (no compute layer
    recognised, or none with a datatype: nothing is claimed); `fallback` (status "fallback") is True
    when a reduced-precision engine runs none of its compute layers in that precision or lower, or
    runs more than half of them in FP32. Fused layers never count as fallback.
    """
    data = json.loads(engine_info) if isinstance(engine_info, str) else engine_info
    layers = (data.get("Layers", []) if isinstance(data, dict) else data) or []
    rows = _layer_rows(layers)
    counts = Counter("fused" if r["role"] == "fused" else r["precision"] for r in rows)
    compute = [r for r in rows if r["role"] == "compute"]
    fused = [r for r in rows if r["role"] == "fused"]
    fused_note = (f"; {len(fused)} fused Myelin/ForeignNode layer(s), whose inner precision the inspector "
                  "does not show" if fused else "")
    status, message = _verdict(compute, requested, fused_note, any(isinstance(x, dict) for x in layers))
    return {"layers": len(rows), "by_precision": dict(counts), "compute_layers": len(compute),
            "compute_layers_fp32": [r["name"] for r in compute if r["precision"] == "fp32"],
            "fused_layers": len(fused), "reformat_layers": sum(r["role"] == "reformat" for r in rows),
            "status": status, "fallback": status == "fallback", "message": message}


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
    tf32: bool = False  # whether FP32 layers were allowed to use TF32


def tensorrt_major(trt) -> int:
    """Major version of the imported `tensorrt` module (10, 11, ...)."""
    return int(str(trt.__version__).split(".")[0])


def network_is_strongly_typed(trt, strongly_typed: bool) -> bool:
    """Whether `build_engine` builds a strongly typed network with this TensorRT, for the caller's
    `strongly_typed` wish. TensorRT 10: as asked. TensorRT 11: always (weak typing and its FP16/INT8
    builder flags were removed), so `strongly_typed=False` raises TensorRTError; TensorRT < 10 too."""
    major = tensorrt_major(trt)
    if major < 10:
        raise TensorRTError(f"TensorRT {trt.__version__} is too old: tokenpose builds engines with TensorRT 10 or newer")
    if major >= 11 and not strongly_typed:
        raise TensorRTError(
            f"TensorRT {trt.__version__} builds strongly typed networks only (weak typing and the FP16/INT8 "
            "builder flags were removed in TensorRT 11): build with strongly_typed=True; the precision comes "
            "from the ONNX model"
        )
    return bool(strongly_typed)


def _logger(trt):
    """A TensorRT logger that keeps warnings and errors (for TensorRTError) in `.lines`."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.lines.append(f"[{str(severity).split('.')[-1]}] {msg}")

    return _Logger()


def _parse_onnx(trt, builder, logger, onnx_path, strong: bool, input_name: str):
    """(network, parser) from the ONNX file; the parser owns the weights, so it must outlive the build."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # ignored (kept) in TRT 11
    network = builder.create_network(1 << int(flag) if strong and flag is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else 'unknown error'}",
                            errors + logger.lines)
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if input_name not in inputs:
        raise TensorRTError(f"{onnx_path}: the ONNX model's inputs are {inputs}, not {input_name!r}", logger.lines)
    return network, parser


def _configure(trt, config, precision: str, strong: bool, tf32: bool, workspace_bytes: int) -> bool:
    """Workspace limit, DETAILED profiling, the weak-typing precision flags (TensorRT 10 only) and TF32
    (cleared unless `tf32`). Returns whether TF32 stays allowed."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not strong:  # explicit (Q/DQ) INT8 quantization needs no calibrator; INT8 keeps FP16 as fallback
        for name in {"fp16": ("FP16",), "int8": ("FP16", "INT8")}.get(precision, ()):
            config.set_flag(getattr(trt.BuilderFlag, name))
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is None:
        return False
    if tf32:
        config.set_flag(tf32_flag)
    else:
        config.clear_flag(tf32_flag)
    return bool(config.get_flag(tf32_flag))


def _add_profile(builder, config, input_name: str, shapes: dict, log: list[str]) -> None:
    """The one optimisation profile; TensorRT's RuntimeError (bad shapes) and -1 (refused) become TensorRTError."""
    profile = builder.create_optimization_profile()
    where = f"optimisation profile of {input_name!r} (min {shapes['min']}, opt {shapes['opt']}, max {shapes['max']})"
    try:
        profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
    except (RuntimeError, TypeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TensorRTError(f"TensorRT rejected the {where}: {detail}", log) from None
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTError(f"TensorRT rejected the {where}: add_optimization_profile returned -1", log)


def _inspect(trt, logger, engine_bytes: bytes, precision: str) -> dict:
    """Deserialize the engine just built and summarise its inspector's layer precisions."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise TensorRTError("the engine just built cannot be deserialized", logger.lines)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return summarize_layer_precisions(info, precision)


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
    tf32: bool = False,
) -> EngineBuildResult:
    """Build a serialized TensorRT engine from an ONNX model with a dynamic batch axis.

    precision: what the ONNX model holds ("fp32", "fp16" or "int8" Q/DQ); with a strongly typed
    network it only labels the result and selects the fallback check; with a weakly typed one
    (`strongly_typed=False`, TensorRT 10 only) it sets the FP16/INT8 flags. tf32: let FP32 layers use
    TF32 (off: FP32 means FP32). batch: the one optimisation profile (B, 3, H, W) with (H, W) =
    input_hw; workspace_bytes: WORKSPACE pool limit; timing_cache: file read before and rewritten
    after the build. Raises TensorRTError with the log.
    """
    import time

    import tensorrt as trt

    strong = network_is_strongly_typed(trt, strongly_typed)
    logger = _logger(trt)
    start = time.perf_counter()
    builder = trt.Builder(logger)
    if builder is None:
        raise TensorRTError("cannot create a TensorRT builder (no CUDA device?)", logger.lines)
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path, strong, input_name)
    config = builder.create_builder_config()
    tf32_on = _configure(trt, config, precision, strong, tf32, workspace_bytes)
    shapes = profile_shapes(batch, input_hw)
    _add_profile(builder, config, input_name, shapes, logger.lines)
    use_timing_cache(config, read_timing_cache(timing_cache), timing_cache, logger.lines)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build an engine from {onnx_path}", logger.lines)
    engine_bytes = bytes(serialized)
    if timing_cache is not None:
        write_timing_cache(timing_cache, bytes(config.get_timing_cache().serialize()))
    return EngineBuildResult(
        engine=engine_bytes, strongly_typed=strong, precision=precision,
        profile=shapes, layer_precisions=_inspect(trt, logger, engine_bytes, precision),
        tensorrt_version=str(trt.__version__), gpu=gpu_name(), build_seconds=time.perf_counter() - start,
        timing_cache=None if timing_cache is None else str(timing_cache), log=logger.lines, tf32=tf32_on,
    )
