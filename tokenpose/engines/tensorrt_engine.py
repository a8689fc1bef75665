"""TensorRT engine: a serialised TensorRT 10 `.engine` with its manifest.

Uses the TensorRT 10 named-tensor API: `set_input_shape`, `set_tensor_address` and
`execute_async_v3` on one CUDA stream. Device buffers for the profile's largest batch are allocated
once when the engine is opened (torch CUDA tensors when PyTorch has CUDA, else allocations through
cuda-python, `tokenpose.cuda.import_cudart`; the environment variable TOKENPOSE_TENSORRT_BUFFERS=
torch|cuda-python picks one, so a GPU test run exercises both) and their addresses set once; a call sets
only the input shape, copies in, runs and copies out. `close()` (or garbage collection) frees them.
The batch of every call is checked against the engine's optimisation profile before TensorRT sees it.
Loading verifies the manifest (sha256, TensorRT version and GPU of the build).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose import cuda as cuda_helper
from tokenpose.engines.base import EngineMeta, check_engine_input, check_precision, reject_options
from tokenpose.errors import TokenPoseError
from tokenpose.manifest import Manifest, read_manifest, verify_manifest


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
    """Device memory and a stream through PyTorch CUDA tensors (freed when the tensors are dropped)."""

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

    def upload_into(self, buf, host: np.ndarray) -> None:
        """Copy `host` (C-contiguous, buf's dtype) into the first rows of device buffer `buf`."""
        src = self.torch.from_numpy(host)
        with self.torch.cuda.stream(self.stream):
            buf[: host.shape[0]].copy_(src, non_blocking=False)  # pageable host memory: synchronous copy

    def download(self, buf, rows: int, shape: tuple[int, ...]) -> np.ndarray:
        """The first `rows` rows of `buf` viewed as `shape`, as float32 on the host."""
        n = int(np.prod(shape))
        with self.torch.cuda.stream(self.stream):
            out = buf.reshape(-1)[:n].reshape(shape).float().cpu()
        return out.numpy()

    def free(self, buf) -> None:
        pass  # the caller drops its reference; the caching allocator takes the memory back

    def close(self) -> None:
        pass

    @property
    def handle(self) -> int:
        return int(self.stream.cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()


class _CudaPythonBuffers:
    """Device memory and a stream through cuda-python's runtime API (no CUDA PyTorch needed)."""

    class _Buf:
        def __init__(self, ptr: int, shape, dtype) -> None:
            self.ptr, self.shape, self.dtype = ptr, tuple(shape), np.dtype(dtype)
            self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize

    def __init__(self) -> None:
        cudart = cuda_helper.import_cudart()
        if cudart is None:
            raise TokenPoseError(
                "TensorRT engines need device buffers: install cuda-python>=12.6 (pip install 'tokenpose[gpu]'), "
                "or a CUDA build of PyTorch"
            )
        self.cudart = cudart
        self._owned: list[int] = []
        self.stream = None
        self.stream = self._check(cudart.cudaStreamCreate())

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if not cuda_helper.cuda_ok(self.cudart, err):
            raise TokenPoseError(f"CUDA runtime error {err}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def empty(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._check(self.cudart.cudaMalloc(nbytes)))
        self._owned.append(ptr)
        return self._Buf(ptr, shape, dtype)

    @staticmethod
    def ptr(buf) -> int:
        return buf.ptr

    def upload_into(self, buf, host: np.ndarray) -> None:
        if host.nbytes > buf.nbytes:
            raise TokenPoseError(f"input of {host.nbytes} bytes does not fit the {buf.nbytes}-byte device buffer")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(buf.ptr, host.ctypes.data, host.nbytes, kind, self.stream))
        self.synchronize()  # pageable host memory that the caller may free right after

    def download(self, buf, rows: int, shape: tuple[int, ...]) -> np.ndarray:
        host = np.empty(shape, dtype=buf.dtype)
        if host.nbytes > buf.nbytes:
            raise TokenPoseError(f"output of {host.nbytes} bytes exceeds the {buf.nbytes}-byte device buffer")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(host.ctypes.data, buf.ptr, host.nbytes, kind, self.stream))
        self.synchronize()
        return host.astype(np.float32, copy=False)

    def free(self, buf) -> None:
        if buf is not None and buf.ptr in self._owned:
            self._owned.remove(buf.ptr)
            self.cudart.cudaFree(buf.ptr)

    def close(self) -> None:
        """Free every allocation and the stream (idempotent)."""
        for ptr in list(self._owned):
            self.cudart.cudaFree(ptr)
        self._owned.clear()
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    @property
    def handle(self) -> int:
        return cuda_helper.native_handle(self.stream)

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream))


BUFFERS_ENV = "TOKENPOSE_TENSORRT_BUFFERS"


def _buffers():
    """Device buffers as TOKENPOSE_TENSORRT_BUFFERS says: "torch", "cuda-python", or "auto" / unset
    (torch CUDA tensors when PyTorch has CUDA, else cuda-python)."""
    choice = os.environ.get(BUFFERS_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "torch", "cuda-python"):
        raise TokenPoseError(f"{BUFFERS_ENV}={choice!r}: expected 'auto', 'torch' or 'cuda-python'")
    if choice == "cuda-python":
        return _CudaPythonBuffers()
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
    except ImportError:
        torch_cuda = False
    if torch_cuda:
        return _TorchBuffers()
    if choice == "torch":
        raise TokenPoseError(f"{BUFFERS_ENV}=torch, but PyTorch has no CUDA device here")
    return _CudaPythonBuffers()


class TensorRTEngine:
    """A deserialised TensorRT engine behind the Engine protocol.

    `__call__`: (B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps (numpy, host),
    with min_batch <= B <= max_batch of the engine's optimisation profile 0.
    """

    name = "tensorrt"

    def __init__(self, path: Path, manifest: Manifest, meta: EngineMeta, engine, trt) -> None:
        """`meta` is the manifest's; its batch range is replaced by the engine's profile 0."""
        self.path = path
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
        h, w = meta.input_hw
        shape = tuple(engine.get_tensor_shape(self.input_name))
        if shape[1:] != (3, h, w):
            raise TokenPoseError(
                f"{path}: engine input {list(shape)} does not match variant {meta.variant!r} "
                f"(expected [B, 3, {h}, {w}]): mismatched manifest"
            )
        lo, _opt, hi = engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.meta = dataclasses.replace(meta, min_batch=self.min_batch, max_batch=self.max_batch)
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        # Device buffers for the profile's largest batch, allocated once: a smaller batch uses their
        # first rows (TensorRT reads/writes only the shape set per call). The addresses never change.
        self._buffers = None
        self._device_in = self._device_out = None
        self._buffers = _buffers()
        try:
            if not self.context.set_input_shape(self.input_name, (self.max_batch, 3, h, w)):
                raise TokenPoseError(f"{path}: TensorRT rejected the profile's maximum input shape")
            max_out = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
            if any(d < 0 for d in max_out):
                raise TokenPoseError(f"{path}: TensorRT cannot tell the output shape {list(max_out)} at batch {self.max_batch}")
            self._device_in = self._buffers.empty((self.max_batch, 3, h, w), self.input_dtype)
            self._device_out = self._buffers.empty(max_out, self.output_dtype)
            if not (self.context.set_tensor_address(self.input_name, self._buffers.ptr(self._device_in))
                    and self.context.set_tensor_address(self.output_name, self._buffers.ptr(self._device_out))):
                raise TokenPoseError(f"{path}: TensorRT rejected the device buffer addresses")
        except BaseException:
            self.close()
            raise

    @property
    def config(self) -> EngineMeta:
        """`meta`, under the name callers written against a ModelConfig use (sizes, joints, dataset)."""
        return self.meta

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, verify: bool = True, **unused: Any) -> TensorRTEngine:
        """Deserialise `path` after verifying its manifest `path.json`."""
        precision = unused.pop("precision", None)
        device = unused.pop("device", None)
        if device not in (None, "auto", "cuda", "tensorrt"):
            raise TokenPoseError(f"TensorRT engines run on the GPU; device {device!r} is not possible")
        reject_options(unused, "tensorrt")
        path = Path(path)
        trt = _import_tensorrt()
        manifest = verify_manifest(path, tensorrt_version_now=str(trt.__version__)) if verify else read_manifest(path)
        if manifest.format != "tensorrt":
            raise TokenPoseError(f"{path}: its manifest describes a {manifest.format!r} artifact, not a TensorRT engine")
        check_precision(path, manifest, precision)
        meta = EngineMeta.from_manifest(manifest, path)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise TokenPoseError(
                f"{path}: TensorRT {trt.__version__} cannot deserialise this engine (built with another "
                "version or for another GPU?): rebuild it"
            )
        return cls(path, manifest, meta, engine, trt)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps."""
        x = check_engine_input(images, self.meta, self.name)
        if x.shape[0] < self.min_batch:
            raise TokenPoseError(f"{self.path}: batch {x.shape[0]} is below the engine profile's minimum {self.min_batch}")
        if self._buffers is None:
            raise TokenPoseError(f"{self.path}: the engine was closed")
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        buffers = self._buffers
        try:
            if not self.context.set_input_shape(self.input_name, x.shape):
                raise TokenPoseError(f"{self.path}: TensorRT rejected input shape {x.shape}")
            out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
            buffers.upload_into(self._device_in, x)
            if not self.context.execute_async_v3(buffers.handle):
                raise TokenPoseError(f"{self.path}: TensorRT execution failed (see the TensorRT log above)")
            return buffers.download(self._device_out, x.shape[0], out_shape)
        finally:
            # A failed call leaves no work queued on the stream that could touch the buffers later.
            with contextlib.suppress(Exception):  # keep the original error
                buffers.synchronize()

    def close(self) -> None:
        """Free the device buffers, the stream and the execution context (idempotent)."""
        buffers, self._buffers = getattr(self, "_buffers", None), None
        if buffers is not None:
            with contextlib.suppress(Exception):
                buffers.synchronize()
            buffers.free(getattr(self, "_device_in", None))
            buffers.free(getattr(self, "_device_out", None))
            buffers.close()
        self._device_in = self._device_out = None
        self.context = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: modules may already be gone
            self.close()

    def __enter__(self) -> TensorRTEngine:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TensorRTEngine({self.path.name}, {self.meta.variant}, {self.precision}, batch {self.min_batch}-{self.max_batch})"
