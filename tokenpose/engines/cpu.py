"""What this CPU is, from /proc/cpuinfo: its model name and feature flags (Linux; None elsewhere).

The engines use them to say when a precision runs emulated (`torch_engine.emulated_reason`) and to
key the cached chunk-size measurements (`chunking`) to the machine they were taken on.
`retain_freed_memory` is the malloc policy the PyTorch-based CPU engines set for their process.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

__all__ = ["cpu_flags", "cpu_model", "retain_freed_memory"]

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo; empty where it cannot be read."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block: the others repeat it
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); None where they cannot be read."""
    info = _cpuinfo()
    text = info.get("flags", info.get("Features"))
    return None if text is None else frozenset(text.split())


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), else the platform's machine type."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


@functools.cache
def retain_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    PyTorch's CPU allocator mallocs and frees every tensor. glibc serves blocks above its mmap
    threshold (at most 32 MB) with a fresh mmap and unmaps them on free, so each call of an eager
    or AOTInductor engine page-faults its large activations in again, the kernel zeroing every page:
    S-v2 eager at batch 32 took ~36,000 minor faults and 70 ms of system time per image, a third of
    the per-image slowdown from batch 1 (benchmarks/README.md). With the mmap threshold raised to
    1 GiB and heap trimming off, freed blocks stay in the heap and the next call reuses them, as
    ONNX Runtime's own arena does. The process keeps its peak heap instead of shrinking back.

    Process-wide and set once; a no-op returning False off glibc or when TOKENPOSE_MALLOC=system.
    """
    if os.environ.get("TOKENPOSE_MALLOC", "").lower() == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
