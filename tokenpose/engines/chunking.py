"""The chunk size `PosePredictor(batch_size="auto")` runs an engine at: its fastest, measured once.

On a CPU the images/s of an engine need not grow with the batch: past some size the activations
no longer fit the caches and per-image time rises (benchmarks/README.md, torch path). So instead of
the engine's max batch, `auto_chunk_size` times the engine at the powers of two up to that limit,
keeps the smallest batch within `TOLERANCE` of the best images/s (a smaller chunk also means lower
latency and memory) and caches the table in `$XDG_CACHE_HOME/tokenpose/chunk_sizes.json`, keyed by
the artifact's sha256, the engine, precision, CPU model and threads, so it is measured once per
engine and machine. GPU engines keep their largest batch: there throughput only grows with it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose.engines.cpu import cpu_model
from tokenpose.files import atomic_write, user_cache_dir

__all__ = ["TOLERANCE", "auto_chunk_size", "best_chunk_size", "cache_file", "candidate_sizes", "engine_key",
           "measure_throughput", "on_gpu"]

TOLERANCE = 0.05  # a smaller batch within 5% of the best images/s is preferred
CACHE_VERSION = 1
Table = dict[int, float]  # batch size -> images/s


def cache_file() -> Path:
    """`$XDG_CACHE_HOME/tokenpose/chunk_sizes.json` (default `~/.cache/tokenpose/...`)."""
    return user_cache_dir() / "chunk_sizes.json"


def on_gpu(engine: Any) -> bool:
    """Whether `engine` runs on a GPU (TensorRT, or a torch / AOTI / ONNX engine on CUDA)."""
    if engine.name == "tensorrt":
        return True
    device = getattr(engine, "device", "cpu")
    return str(getattr(device, "type", device)).split(":")[0] in ("cuda", "tensorrt")


def candidate_sizes(min_batch: int, limit: int) -> list[int]:
    """Powers of two from `min_batch` up to `limit`, and `limit` itself: the batches timed."""
    sizes = {limit}
    b = 1
    while b < limit:
        if b >= min_batch:
            sizes.add(b)
        b *= 2
    return sorted(sizes)


def best_chunk_size(table: Mapping[int, float], tolerance: float = TOLERANCE) -> int:
    """The smallest batch whose images/s is within `tolerance` of the best in `table` ({batch: images/s})."""
    if not table:
        raise ValueError("no measured batch sizes to choose from")
    best = max(table.values())
    return min(b for b, ips in table.items() if ips >= best * (1.0 - tolerance))


def engine_key(engine: Any) -> str | None:
    """What a measurement is valid for: artifact sha256, engine, precision, CPU model and threads.
    None when the engine has no artifact hash (a model built in memory): then nothing is cached."""
    sha = (getattr(engine, "manifest", None) or {}).get("sha256")
    if not sha:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = getattr(engine, "threads", None) or os.environ.get("OMP_NUM_THREADS") or "default"
    return f"{sha} {engine.name} {engine.precision} | {cpu_model()} | {cores} cores, threads {threads}"


def measure_throughput(engine: Any, sizes: Sequence[int], repeats: int = 2) -> Table:
    """images/s of `engine` at each batch size: one untimed call, then the fastest of `repeats`."""
    meta = engine.meta
    rng = np.random.default_rng(0)
    table: Table = {}
    for b in sizes:
        x = rng.standard_normal((b, 3, *meta.input_hw)).astype(np.float32)
        engine(x)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            engine(x)
            best = min(best, time.perf_counter() - t0)
        table[b] = b / best
    return table


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None
    return entries if isinstance(entries, dict) else {}


def _cached_table(entries: Mapping[str, Any], key: str, sizes: Sequence[int]) -> Table | None:
    """The cached images/s of `key` at `sizes`, or None when any of them was not measured."""
    stored = (entries.get(key) or {}).get("images_per_s") or {}
    try:
        table = {b: float(stored[str(b)]) for b in sizes}
    except (KeyError, TypeError, ValueError):
        return None
    return table if all(v > 0 for v in table.values()) else None


def auto_chunk_size(engine: Any, limit: int, *, cache: Path | None = None,
                    measure: Callable[[Any, Sequence[int]], Mapping[int, float]] = measure_throughput) -> int:
    """The batch size (min_batch .. limit) to run `engine` at: `limit` on a GPU, else the fastest
    per image among `candidate_sizes`, from the cache or measured now with `measure` and cached."""
    if on_gpu(engine) or limit <= engine.min_batch:
        return max(limit, engine.min_batch)
    sizes = candidate_sizes(engine.min_batch, limit)
    path = cache or cache_file()
    key = engine_key(engine)
    entries = _read_cache(path) if key else {}
    table = _cached_table(entries, key, sizes) if key else None
    if table is None:
        measured = {int(b): float(v) for b, v in measure(engine, sizes).items()}
        table = {b: measured[b] for b in sizes if b in measured}
        if key:
            old = (entries.get(key) or {}).get("images_per_s") or {}
            entries[key] = {"images_per_s": {**old, **{str(b): v for b, v in measured.items()}},
                            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            _write_cache(path, entries)
    return best_chunk_size(table)


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    try:
        with atomic_write(path, "w") as f:
            json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
    except OSError as exc:  # a read-only home: the choice still holds for this predictor
        warnings.warn(f"cannot cache chunk sizes in {path}: {exc}", stacklevel=3)
