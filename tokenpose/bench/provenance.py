"""Where and with what a benchmark ran: CPU, GPU, library versions, thread settings, load, command.

Numbers from a shared machine mean little without these: the report prints them beside every table.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from tokenpose.engines.cpu import cpu_flags, cpu_model
from tokenpose.manifest import library_versions

__all__ = ["collect_provenance", "command_line", "load_average"]

# The instruction-set flags that decide GEMM speed (AVX-512, VNNI, AMX, FP16).
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "asimd", "sve")


def _cpu_flags() -> list[str]:
    have = cpu_flags() or frozenset()
    return [f for f in _CPU_FLAGS if f in have]


def _gpu_info() -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    info: dict[str, Any] = {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version(), "driver": None}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        if out.returncode == 0:
            info["driver"] = out.stdout.strip().splitlines()[0]
    return info


def _versions() -> dict[str, str | None]:
    out = dict(library_versions())
    for dist in ("numpy", "opencv-python-headless", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages; None where the OS has none (Windows)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def collect_provenance(threads: int = 0) -> dict[str, Any]:
    """Where and with what a run was made: CPU, GPU, library versions, thread settings, load.

    `load_average.end` is None here: the run fills it in when it finishes.
    """
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "CUDA_VISIBLE_DEVICES") if k in os.environ}
    return {
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "affinity_cores": affinity,
                "flags": _cpu_flags()},
        "load_average": {"start": load_average(), "end": None},
        "gpu": _gpu_info(),
        "versions": _versions(),
        "threads": {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
                    "onnxruntime_intra_op": threads or "default (one per physical core)", "env": env},
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def command_line() -> str:
    """This process's command line, as a user would type it again."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("-c", "-m", "") else "tokenpose-bench"
    return " ".join([prog, *map(shlex.quote, sys.argv[1:])])
