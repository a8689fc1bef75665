"""Where the time goes inside an ONNX Runtime engine: a per-op-type table from ORT's profiler.

`profile_onnx(prepared, images, runs)` opens a twin session of the engine with the same model,
fusions and thread settings and ONNX Runtime's profiler on (`OnnxEngine.profiled_session`), runs
the batch `runs` times after one warm-up call, and sums the kernel time of every node by op type
(`QLinearConv`, `MatMulIntegerToFloat`, `MultiHeadAttention`, `DequantizeLinear`, ...): the table
that shows whether Q/DQ pairs became integer kernels and what is left in float32.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from tokenpose.bench.preparation import PreparedEngine

__all__ = ["OpProfile", "profile_onnx", "summarize_trace"]


@dataclass
class OpProfile:
    """Per-op-type kernel time of one engine at one batch: ops[] = {op, ms (per call), share, nodes}."""

    variant: str
    engine: str
    batch: int
    runs: int
    total_ms: float = 0.0  # kernel time per call, summed over nodes
    ops: list[dict] = field(default_factory=list)


def summarize_trace(events: list[dict], calls: int) -> tuple[float, list[dict]]:
    """ORT profiler events of `calls` session runs -> (kernel ms per call, [{op, ms, share, nodes}]
    slowest first); `nodes` is how many graph nodes of that op type ran."""
    per_op: collections.Counter = collections.Counter()
    nodes: dict[str, set[str]] = collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] += float(e.get("dur", 0))
            nodes[op].add(e["name"])
    total_us = sum(per_op.values())
    ops = [{"op": op, "ms": us / calls / 1e3, "share": us / total_us if total_us else 0.0, "nodes": len(nodes[op])}
           for op, us in per_op.most_common()]
    return total_us / calls / 1e3, ops


def profile_onnx(prepared: PreparedEngine, images: np.ndarray, variant: str, runs: int = 3) -> OpProfile:
    """Profile `prepared` (an ONNX Runtime engine) on `images` (B, 3, H, W): `runs` calls + 1 warm-up."""
    engine = prepared.engine
    with tempfile.TemporaryDirectory(prefix="tokenpose-profile-") as tmp:
        session = engine.profiled_session(os.path.join(tmp, "ort"))
        feed = {engine.input_name: np.ascontiguousarray(images, dtype=engine.input_dtype)}
        for _ in range(runs + 1):
            session.run([engine.output_name], feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    total, ops = summarize_trace(events, runs + 1)
    return OpProfile(variant, prepared.name, int(images.shape[0]), runs, total, ops)
