"""The one place that imports cuda-python's runtime API and reads the GPU name.

cuda-python moved its runtime bindings to `cuda.bindings.runtime` in 12.6 and removed the old
`cuda.cudart` module in 13.0; `import_cudart` tries the new layout first and the old one as a
fallback, so the TensorRT engine's device buffers (`tensorrt_engine._CudaPythonBuffers`) and the
GPU name recorded in / checked against an engine's manifest (`gpu_name`) see the same module.
Nothing here imports torch or cuda-python at module import time.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["cuda_ok", "cudart_device_name", "gpu_name", "import_cudart"]


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
