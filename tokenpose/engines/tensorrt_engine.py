"""TensorRT engine: a serialised TensorRT 10 `.engine` with its manifest.

Uses the TensorRT 10 named-tensor API: `set_input_shape`, `set_tensor_address` and
`execute_async_v3` on one CUDA stream. Device buffers are torch CUDA tensors when PyTorch has
CUDA, else allocations through cuda-python (`cuda.bindings.runtime`). The batch of every call is
checked against the engine's optimisation profile before TensorRT sees it.
Loading verifies the manifest (sha256, TensorRT version and GPU of the build).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose.engines.base import check_engine_input
from tokenpose.errors import TokenPoseError
from tokenpose.models.config import ModelConfig


def _import_tensorrt():
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError from missing CUDA libraries
        raise TokenPoseError(
            f"TensorRT engines need the tensorrt package (pip install 'tokenpose[gpu]'): {type(exc).__name__}: {exc}"
        ) from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TokenPoseError(f"TensorRT {trt.__version__} is too old: tokenpose engines need TensorRT 10 or newer")
    return trt


class _TorchBuffers:
    """Device memory and a stream through PyTorch CUDA tensors."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        torch_dtype = {np.float32: self.torch.float32, np.float16: self.torch.float16}[np.dtype(dtype).type]
        return self.torch.empty(shape, dtype=torch_dtype, device="cuda")

    @staticmethod
    def ptr(buf) -> int:
        return int(buf.data_ptr())

    def upload(self, host: np.ndarray):
        with self.torch.cuda.stream(self.stream):
            return self.torch.from_numpy(host).pin_memory().to("cuda", non_blocking=True)

    def download(self, buf) -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            out = buf.float().cpu()
        return out.numpy()

    @property
    def handle(self) -> int:
        return int(self.stream.cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()


class _CudaPythonBuffers:
    """Device memory and a stream through cuda-python's runtime API (no CUDA PyTorch needed)."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart  # cuda-python < 12.6 layout
            except ImportError:
                raise TokenPoseError(
                    "TensorRT engines need device buffers: install cuda-python, or a CUDA build of PyTorch"
                ) from None
        self.cudart = cudart
        self.stream = self._check(cudart.cudaStreamCreate())
        self._owned: list[int] = []

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise TokenPoseError(f"CUDA runtime error {err}")
        return rest[0] if len(rest) == 1 else rest

    class _Buf:
        def __init__(self, ptr: int, shape, dtype) -> None:
            self.ptr, self.shape, self.dtype = ptr, tuple(shape), np.dtype(dtype)

    def empty(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._check(self.cudart.cudaMalloc(nbytes)))
        self._owned.append(ptr)
        return self._Buf(ptr, shape, dtype)

    @staticmethod
    def ptr(buf) -> int:
        return buf.ptr

    def upload(self, host: np.ndarray):
        buf = self.empty(host.shape, host.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(buf.ptr, host.ctypes.data, host.nbytes, kind, self.stream))
        self._check(self.cudart.cudaStreamSynchronize(self.stream))  # host array may go away
        return buf

    def download(self, buf) -> np.ndarray:
        host = np.empty(buf.shape, dtype=buf.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(host.ctypes.data, buf.ptr, host.nbytes, kind, self.stream))
        self.synchronize()
        return host.astype(np.float32)

    def free(self, buf) -> None:
        if buf.ptr in self._owned:
            self._owned.remove(buf.ptr)
            self.cudart.cudaFree(buf.ptr)

    @property
    def handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream))


def _buffers():
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchBuffers()
    except ImportError:
        pass
    return _CudaPythonBuffers()


class TensorRTEngine:
    """A deserialised TensorRT engine behind the Engine protocol.

    `__call__`: (B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps (numpy, host),
    with min_batch <= B <= max_batch of the engine's optimisation profile 0.
    """

    name = "tensorrt"

    def __init__(self, path: Path, manifest, config: ModelConfig, engine, trt) -> None:
        self.path = path
        self.config = config
        self.manifest: dict[str, Any] = manifest.to_dict()
        self.precision = manifest.precision
        self._trt = trt
        self._engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise TokenPoseError(f"{path}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if manifest.input_name not in inputs or manifest.output_name not in outputs:
            raise TokenPoseError(
                f"{path}: engine tensors (inputs {inputs}, outputs {outputs}) do not include the manifest's "
                f"{manifest.input_name!r} -> {manifest.output_name!r}: mismatched manifest"
            )
        self.input_name, self.output_name = manifest.input_name, manifest.output_name
        h, w = config.input_hw
        shape = tuple(engine.get_tensor_shape(self.input_name))
        if shape[1:] != (3, h, w):
            raise TokenPoseError(
                f"{path}: engine input {list(shape)} does not match variant {config.name!r} "
                f"(expected [B, 3, {h}, {w}]): mismatched manifest"
            )
        lo, _opt, hi = engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        self._buffers = _buffers()

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, verify: bool = True, **unused: Any) -> TensorRTEngine:
        """Deserialise `path` after verifying its manifest `path.json`."""
        from tokenpose.engines.onnx_engine import check_precision, config_from_manifest
        from tokenpose.engines.torch_engine import _reject_options
        from tokenpose.export.manifest import read_manifest, verify_manifest

        precision = unused.pop("precision", None)
        device = unused.pop("device", None)
        if device not in (None, "auto", "cuda", "tensorrt"):
            raise TokenPoseError(f"TensorRT engines run on the GPU; device {device!r} is not possible")
        _reject_options(unused, "tensorrt")
        path = Path(path)
        trt = _import_tensorrt()
        manifest = verify_manifest(path, tensorrt_version_now=str(trt.__version__)) if verify else read_manifest(path)
        if manifest.format != "tensorrt":
            raise TokenPoseError(f"{path}: its manifest describes a {manifest.format!r} artifact, not a TensorRT engine")
        check_precision(path, manifest, precision)
        config = config_from_manifest(manifest, path)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise TokenPoseError(
                f"{path}: TensorRT {trt.__version__} cannot deserialise this engine (built with another "
                "version or for another GPU?): rebuild it"
            )
        return cls(path, manifest, config, engine, trt)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps."""
        x = check_engine_input(images, self.config, self.max_batch, self.name)
        if x.shape[0] < self.min_batch:
            raise TokenPoseError(f"{self.path}: batch {x.shape[0]} is below the engine profile's minimum {self.min_batch}")
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if not self.context.set_input_shape(self.input_name, x.shape):
            raise TokenPoseError(f"{self.path}: TensorRT rejected input shape {x.shape}")
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        buffers = self._buffers
        device_in = buffers.upload(x)
        device_out = buffers.empty(out_shape, self.output_dtype)
        self.context.set_tensor_address(self.input_name, buffers.ptr(device_in))
        self.context.set_tensor_address(self.output_name, buffers.ptr(device_out))
        if not self.context.execute_async_v3(buffers.handle):
            raise TokenPoseError(f"{self.path}: TensorRT execution failed (see the TensorRT log above)")
        out = buffers.download(device_out)
        if hasattr(buffers, "free"):
            buffers.free(device_in)
            buffers.free(device_out)
        return out

    def __repr__(self) -> str:
        return f"TensorRTEngine({self.path.name}, {self.config.name}, {self.precision}, batch {self.min_batch}-{self.max_batch})"
