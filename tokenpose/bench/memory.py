"""Peak memory of an engine's calls: process RSS on the CPU, the CUDA allocator or device on a GPU.

On Linux the peak RSS of one call is VmHWM after resetting it through /proc/self/clear_refs
(Linux >= 4.0); elsewhere only the process's lifetime maximum is known, and `kind` says so.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["MemoryProbe"]

_CLEAR_REFS = Path("/proc/self/clear_refs")


def _read_status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak memory of the calls made between `before()` and `after()`, max over calls, in MiB.

    `kind`: "rss" (per-call peak RSS), "rss_lifetime_max", "cuda_max_allocated" (the torch
    engine's allocator) or "cuda_device_used" (other engines: memory in use on the device).
    """

    def __init__(self, device: str, torch_engine: bool) -> None:
        self.device = device
        self.torch_engine = torch_engine
        self.peak_mb = 0.0
        self.delta_mb = 0.0
        self.kind = "rss"
        self._base = 0.0

    def before(self) -> None:
        if self.device == "cuda":
            if self.torch_engine:
                torch.cuda.reset_peak_memory_stats()
                self._base = torch.cuda.memory_allocated() / 2**20
            else:
                free, total = torch.cuda.mem_get_info()
                self._base = (total - free) / 2**20
            return
        if not _reset_peak_rss():
            self.kind = "rss_lifetime_max"
        self._base = (_read_status_kb("VmRSS") or 0) / 1024

    def after(self) -> None:
        if self.device == "cuda":
            if self.torch_engine:
                self.kind = "cuda_max_allocated"
                peak = torch.cuda.max_memory_allocated() / 2**20
            else:
                self.kind = "cuda_device_used"
                free, total = torch.cuda.mem_get_info()
                peak = (total - free) / 2**20
        elif self.kind == "rss":
            peak = (_read_status_kb("VmHWM") or 0) / 1024
        else:  # ru_maxrss is KiB on Linux, bytes on macOS
            scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        self.peak_mb = max(self.peak_mb, peak)
        self.delta_mb = max(self.delta_mb, peak - self._base)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "peak_mb": round(self.peak_mb, 1), "delta_mb": round(self.delta_mb, 1)}
