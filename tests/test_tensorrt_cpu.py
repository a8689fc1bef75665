"""TensorRT 10/11 readiness on CPU: what `build_engine` asks of TensorRT, the inspector JSON of both
versions, and the cuda-python handle / buffer switch of the TensorRT engine.

TensorRT cannot be installed here, so `_stand_in_tensorrt` is a small stand-in `tensorrt` module
that records the builder calls (network flags, builder flags, profile, timing cache, build) and
mirrors the TensorRT 10 / 11 Python enums where they differ (TensorRT 11 has no BuilderFlag.FP16 /
INT8 and no NetworkDefinitionCreationFlag.EXPLICIT_BATCH). It checks call order and flags only:
nothing here is a TensorRT result; tests/test_export_tensorrt.py builds real engines on a GPU.
"""

from __future__ import annotations

import enum
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tokenpose import cuda as cuda_helper
from tokenpose.engines import tensorrt_engine
from tokenpose.errors import TokenPoseError
from tokenpose.export.tensorrt import (
    TensorRTError,
    build_engine,
    layer_datatype,
    network_is_strongly_typed,
    summarize_layer_precisions,
)
from tokenpose.manifest import BatchRange

FP16_T = "Channel major FP16 format where channel % 8 == 0"


def _inspector_json(major: int) -> str:
    """An FP16 TokenPose engine as the inspector describes it (LayerInformationFormat.JSON, DETAILED),
    in TensorRT 10's schema ("Format/Datatype" per tensor, "Bindings" names) or TensorRT 11's
    (separate "Format" and "DataType", "I/O Tensors" objects), with both spellings of layer types."""

    def t(name, fmt, dtype, dims=(-1, 192, 32)):
        if major >= 11:
            return {"Name": name, "Location": "Device", "Dimensions": list(dims), "Format": fmt, "DataType": dtype}
        return {"Name": name, "Location": "Device", "Dimensions": list(dims), "Format/Datatype": fmt}

    def layer(name, kind, inputs, outputs):
        return {"Name": name, "LayerType": kind, "Inputs": inputs, "Outputs": outputs, "TacticName": "", "StreamId": 0}

    fp32 = ("Row major linear FP32 format (kLINEAR)", "Float")
    half = (FP16_T, "Half")
    layers = [
        layer("/Cast", "Cast", [t("images", *fp32, (-1, 3, 256, 192))], [t("/Cast_out", *half)]),
        layer("/patch/Conv", "CaskConvolution" if major < 11 else "Cask_Convolution",
              [t("/Cast_out", *half)], [t("/patch/out", *half)]),
        layer("{ForeignNode[/blocks.0/norm1/LayerNormalization.../blocks.11/Add_1]}", "Myelin",
              [t("/patch/out", *fp32)], [t("/blocks/out", *half)]),
        layer("/head/MatMul", "MatrixMultiply" if major < 11 else "matrix_multiply",
              [t("/blocks/out", *half)], [t("/head/out", *half)]),
        layer("__myl_Gemm_head_1", "gemm", [t("/head/out", *half)], [t("/head/out2", *half)]),
        layer("/Cast_1", "Cast", [t("/head/out2", *half)], [t("heatmaps", *fp32, (-1, 17, 64, 48))]),
    ]
    if major < 11:
        return json.dumps({"Layers": layers, "Bindings": ["images", "heatmaps"]})
    io = [{"Name": n, "IOMode": mode, "DataType": "Float", "Dimensions": d, "Location": "Device",
           "IsShapeInferenceIO": False}
          for n, mode, d in (("images", "Input", [-1, 3, 256, 192]), ("heatmaps", "Output", [-1, 17, 64, 48]))]
    return json.dumps({"Layers": layers, "I/O Tensors": io})


def test_inspector_json_of_tensorrt_10_and_11_give_the_same_summary():
    s10, s11 = (summarize_layer_precisions(_inspector_json(m), "fp16") for m in (10, 11))
    assert s10 == s11
    assert s10["status"] == "ok" and not s10["fallback"]
    assert s10["compute_layers"] == 3 and s10["compute_layers_fp32"] == []  # conv, matmul and gemm
    assert s10["fused_layers"] == 1 and s10["reformat_layers"] == 2
    assert layer_datatype({"Format": "Row major linear FP32 format (kLINEAR)", "DataType": "Half"}) == "fp16"
    assert layer_datatype({"Format/DataType": "Int8"}) == "int8" and layer_datatype("UInt8") == "uint8"


def test_inspector_without_a_recognised_compute_layer_says_unknown_not_fallback():
    """No layer type it knows, or compute layers without datatypes: 'unknown', never 'fell back'."""
    odd = {"Layers": [{"Name": "k", "LayerType": "kgen", "Inputs": [{"Name": "x", "DataType": "Float"}],
                       "Outputs": [{"Name": "y", "DataType": "Float"}]}]}
    untyped = {"Layers": [{"Name": "/patch/Conv", "LayerType": "Convolution", "Inputs": [{"Name": "x"}],
                           "Outputs": [{"Name": "y"}]}]}
    for info in (odd, untyped):
        s = summarize_layer_precisions(info, "fp16")
        assert s["status"] == "unknown" and not s["fallback"], s
        assert "unknown" in s["message"] and "fell back" not in s["message"]
    fell_back = {"Layers": [{"Name": "/patch/Conv", "LayerType": "CaskConvolution",
                             "Inputs": [{"Name": "x", "Format": "Row major linear FP32", "DataType": "Float"}],
                             "Outputs": [{"Name": "y", "DataType": "Float"}]}]}
    s = summarize_layer_precisions(fell_back, "fp16")
    assert s["status"] == "fallback" and s["fallback"] and "fell back" in s["message"]


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


def _stand_in_tensorrt(version: str, *, reject_shapes=False, profile_index=0, onnx_inputs=("images",)):
    """A stand-in `tensorrt` module of the given version that records every builder call in `.calls`."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    calls: list[tuple] = []
    trt.calls = calls
    trt.NetworkDefinitionCreationFlag = (enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0})
                                         if major >= 11 else
                                         enum.IntEnum("NetworkDefinitionCreationFlag",
                                                      {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}))
    flags = {"TF32": 6} if major >= 11 else {"FP16": 0, "INT8": 1, "TF32": 6}  # TRT 11 removed FP16/INT8
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    trt.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})

    class ILogger:
        Severity = _Severity

        def __init__(self) -> None:
            pass

    class Network:
        def __init__(self, flags) -> None:
            self.num_inputs = len(onnx_inputs)

        def get_input(self, i):
            return types.SimpleNamespace(name=onnx_inputs[i])

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            pass

        def parse_from_file(self, path):
            calls.append(("parse", Path(path).name))
            return Path(path).is_file()

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))
            if reject_shapes:
                raise RuntimeError("set_shape: invalid dimensions\nmore details")

    class Config:
        def __init__(self) -> None:
            self.flags = {trt.BuilderFlag.TF32}  # TensorRT enables TF32 unless cleared
            self.cache = None
            self.profiling_verbosity = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag.name))
            self.flags.add(flag)

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag.name))
            self.flags.discard(flag)

        def get_flag(self, flag):
            return flag in self.flags

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))
            return profile_index

        def create_timing_cache(self, data):
            return types.SimpleNamespace(serialize=lambda: b"cache:" + bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache",))
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", config.profiling_verbosity.name, sorted(f.name for f in config.flags)))
            return b"serialized engine"

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data):
            inspector = types.SimpleNamespace(get_engine_information=lambda fmt: _inspector_json(major))
            return types.SimpleNamespace(create_engine_inspector=lambda: inspector)

    trt.ILogger, trt.OnnxParser, trt.Builder, trt.Runtime = ILogger, OnnxParser, Builder, Runtime
    return trt


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not parsed by the stand-in")
    return path


def _build(monkeypatch, trt, onnx_file, **kw):
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    kw.setdefault("precision", "fp32")
    return build_engine(onnx_file, batch=BatchRange(1, 2, 4), input_hw=(256, 192), **kw)


def test_tensorrt_10_builds_strongly_typed_fp32_without_tf32(monkeypatch, onnx_file, tmp_path):
    trt = _stand_in_tensorrt("10.16.0.72")
    cache = tmp_path / "trt.cache"
    result = _build(monkeypatch, trt, onnx_file, timing_cache=cache)
    names = [c[0] for c in trt.calls]
    assert names == ["create_network", "parse", "workspace", "clear_flag", "set_shape", "add_optimization_profile",
                     "set_timing_cache", "build"]
    assert trt.calls[0] == ("create_network", 1 << 1)  # STRONGLY_TYPED is bit 1 in TensorRT 10
    assert trt.calls[3] == ("clear_flag", "TF32") and trt.calls[-1] == ("build", "DETAILED", [])
    assert trt.calls[4] == ("set_shape", "images", (1, 3, 256, 192), (2, 3, 256, 192), (4, 3, 256, 192))
    assert result.strongly_typed and not result.tf32 and result.engine == b"serialized engine"
    assert result.layer_precisions["compute_layers"] == 3
    assert cache.read_bytes() == b"cache:"  # written after the build
    trt.calls.clear()
    assert _build(monkeypatch, trt, onnx_file, tf32=True).tf32
    assert ("set_flag", "TF32") in trt.calls and trt.calls[-1] == ("build", "DETAILED", ["TF32"])


def test_tensorrt_10_weak_typing_sets_the_precision_flags(monkeypatch, onnx_file):
    trt = _stand_in_tensorrt("10.3.0")
    result = _build(monkeypatch, trt, onnx_file, precision="int8", strongly_typed=False)
    assert trt.calls[0] == ("create_network", 0) and not result.strongly_typed
    assert trt.calls[-1] == ("build", "DETAILED", ["FP16", "INT8"])


def test_tensorrt_11_is_always_strongly_typed_and_refuses_weak_typing(monkeypatch, onnx_file):
    trt = _stand_in_tensorrt("11.1.0.7")
    result = _build(monkeypatch, trt, onnx_file, precision="fp16")
    assert trt.calls[0] == ("create_network", 1 << 0)  # the flag TensorRT 11 keeps (and ignores)
    assert result.strongly_typed and trt.calls[-1] == ("build", "DETAILED", [])
    trt.calls.clear()
    with pytest.raises(TensorRTError) as err:
        _build(monkeypatch, trt, onnx_file, precision="fp16", strongly_typed=False)
    assert len(str(err.value).splitlines()) == 1 and "strongly typed networks only" in str(err.value)
    assert trt.calls == []  # refused before anything is built
    assert network_is_strongly_typed(trt, True)
    with pytest.raises(TensorRTError, match="too old"):
        network_is_strongly_typed(types.SimpleNamespace(__version__="8.6.1"), True)


@pytest.mark.parametrize("problem, message", [
    ({"reject_shapes": True}, "rejected the optimisation profile of 'images' (min (1, 3, 256, 192), opt (2, 3, "
                              "256, 192), max (4, 3, 256, 192)): set_shape: invalid dimensions"),
    ({"profile_index": -1}, "add_optimization_profile returned -1"),
    ({"onnx_inputs": ("input",)}, "the ONNX model's inputs are ['input'], not 'images'"),
], ids=["set_shape raises", "profile refused", "other input name"])
def test_profile_problems_are_one_line_tensorrt_errors(monkeypatch, onnx_file, problem, message):
    trt = _stand_in_tensorrt("10.16.0.72", **problem)
    with pytest.raises(TensorRTError) as err:
        _build(monkeypatch, trt, onnx_file)
    first = str(err.value).splitlines()[0]
    assert message in first and "Traceback" not in str(err.value)
    assert not any(c[0] == "build" for c in trt.calls)


def _stand_in_cuda_utils(monkeypatch, getter):
    cuda, bindings, utils = (types.ModuleType(n) for n in ("cuda", "cuda.bindings", "cuda.bindings.utils"))
    utils.get_cuda_native_handle = getter
    cuda.bindings, bindings.utils = bindings, utils
    for name, mod in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.utils", utils)):
        monkeypatch.setitem(sys.modules, name, mod)


class _Stream:
    """A cuda-bindings 13 handle: `int()` is deprecated, the registered getter gives the address."""

    def __init__(self, address: int) -> None:
        self.address = address

    def __int__(self) -> int:
        raise AssertionError("int(handle) is deprecated in cuda-bindings 13")


def test_native_handle_uses_get_cuda_native_handle_when_present(monkeypatch):
    def getter(obj):
        if not isinstance(obj, _Stream):
            raise TypeError(f"unsupported type {type(obj)}")
        return obj.address

    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # older cuda-python: int()
    assert cuda_helper.native_handle(7) == 7 and cuda_helper.native_handle(np.uint64(9)) == 9
    _stand_in_cuda_utils(monkeypatch, getter)
    assert cuda_helper.native_handle(_Stream(0x7F00)) == 0x7F00
    assert cuda_helper.native_handle(np.uint64(11)) == 11  # no getter for it: int()


def _stream_only_cudart():
    """cuda-python's runtime as far as a stream goes, with cuda-bindings 13 handle objects."""
    cudart = types.ModuleType("cuda.bindings.runtime")
    cudart.cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInvalidValue": 1})
    cudart.streams = set()
    ok = cudart.cudaError_t.cudaSuccess

    def create():
        stream = _Stream(0x5000 + len(cudart.streams))
        cudart.streams.add(stream)
        return ok, stream

    def destroy(stream):
        cudart.streams.discard(stream)
        return (ok,)

    cudart.cudaStreamCreate, cudart.cudaStreamDestroy = create, destroy
    cudart.cudaStreamSynchronize = lambda stream: (ok,)
    return cudart


def test_tensorrt_buffers_switch(monkeypatch):
    """TOKENPOSE_TENSORRT_BUFFERS picks the device buffers: cuda-python even where torch has CUDA
    (the stream handle given to TensorRT through get_cuda_native_handle), torch only where it has
    CUDA; anything else is one clear error."""
    cudart = _stream_only_cudart()
    monkeypatch.setattr(cuda_helper, "import_cudart", lambda: cudart)
    _stand_in_cuda_utils(monkeypatch, lambda obj: obj.address)
    monkeypatch.setenv(tensorrt_engine.BUFFERS_ENV, "cuda-python")
    buffers = tensorrt_engine._buffers()
    assert isinstance(buffers, tensorrt_engine._CudaPythonBuffers) and buffers.handle == 0x5000
    buffers.close()
    assert cudart.streams == set()
    monkeypatch.setenv(tensorrt_engine.BUFFERS_ENV, "torch")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(TokenPoseError, match="TOKENPOSE_TENSORRT_BUFFERS=torch, but PyTorch has no CUDA device"):
        tensorrt_engine._buffers()
    monkeypatch.setenv(tensorrt_engine.BUFFERS_ENV, "cupy")
    with pytest.raises(TokenPoseError, match="expected 'auto', 'torch' or 'cuda-python'"):
        tensorrt_engine._buffers()
    monkeypatch.setenv(tensorrt_engine.BUFFERS_ENV, "auto")
    auto = tensorrt_engine._buffers()  # torch without CUDA: cuda-python
    assert isinstance(auto, tensorrt_engine._CudaPythonBuffers)
    auto.close()
