"""The one place that imports cuda-python's runtime API and reads the GPU name.

cuda-python moved its runtime bindings to `cuda.bindings.runtime` in 12.6.1 and removed the old
`cuda.cudart` module in 13.0; `import_cudart` tries the new layout first and the old one as a
fallback, so the TensorRT engine's device buffers (`tensorrt_engine._CudaPythonBuffers`) and the
GPU name recorded in / checked against an engine's manifest (`gpu_name`) see the same module.
cuda-bindings 13 deprecates `int(handle)` on its handle types (`cudaStream_t`, ...) in favour of
`cuda.bindings.utils.get_cuda_native_handle`; `native_handle` uses it where it exists.
Nothing here imports torch or cuda-python at module import time.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["cuda_ok", "cudart_device_name", "gpu_name", "import_cudart", "native_handle"]


def import_cudart() -> Any | None:
    """cuda-python's CUDA runtime module (`cuda.bindings.runtime`, else the legacy `cuda.cudart`),
    or None when cuda-python is not installed (or cannot be imported)."""
    with contextlib.suppress(Exception):  # ImportError, or a broken install (missing CUDA libraries)
        from cuda.bindings import runtime as cudart

        return cudart
    try:
        from cuda import cudart  # cuda-python < 12.6 layout, removed in 13

        return cudart
    except Exception:  # noqa: BLE001
        return None


def native_handle(handle: Any) -> int:
    """The address a cuda-python handle (`cudaStream_t`, ...) wraps, as the int TensorRT's
    `execute_async_v3` takes: through `cuda.bindings.utils.get_cuda_native_handle` (cuda-bindings
    12.9 / 13, where `int(handle)` is deprecated), else `int(handle)` (older cuda-python, plain ints)."""
    if isinstance(handle, int):
        return handle
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except Exception:  # noqa: BLE001 - older cuda-python without it, or no cuda-python at all
        return int(handle)
    try:
        return int(get_cuda_native_handle(handle))
    except TypeError:  # a type it has no getter for: the plain conversion still works there
        return int(handle)


def cuda_ok(cudart: Any, err: Any) -> bool:
    """True when a cuda-python runtime error code is cudaSuccess (enum or int, any version)."""
    success = getattr(getattr(cudart, "cudaError_t", None), "cudaSuccess", 0)
    if err == success:
        return True
    try:
        return int(err) == 0
    except (TypeError, ValueError):
        return False


def cudart_device_name(device: int = 0, cudart: Any | None = None) -> str | None:
    """Name of CUDA device `device` through cuda-python's runtime API, or None (no cuda-python,
    no driver, no such device)."""
    cudart = cudart if cudart is not None else import_cudart()
    if cudart is None:
        return None
    with contextlib.suppress(Exception):
        err, props = cudart.cudaGetDeviceProperties(device)
        if cuda_ok(cudart, err):
            name = props.name
            text = name.decode(errors="replace") if isinstance(name, bytes | bytearray) else str(name)
            return text.split("\x00", 1)[0].strip() or None
    return None


def gpu_name(device: int = 0) -> str | None:
    """Name of CUDA device `device` as PyTorch reports it (a CUDA build of torch), else as
    cuda-python's runtime reports it; None when neither can read it (no GPU, no driver, neither
    package). Both report the driver's device name, so engines built and loaded through either
    compare equal."""
    with contextlib.suppress(Exception):  # torch absent or without CUDA, or a driver problem
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(device)
    return cudart_device_name(device)
