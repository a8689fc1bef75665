"""What this CPU is, from /proc/cpuinfo: its model name and feature flags (Linux; None elsewhere).

The engines use them to say when a precision runs emulated (`torch_engine.emulated_reason`) and to
key the cached chunk-size measurements (`chunking`) to the machine they were taken on.
"""

from __future__ import annotations

import functools
import platform

__all__ = ["cpu_flags", "cpu_model"]


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
