"""The benchmark harness used by `tokenpose-bench`: timing, memory, matmul peak, reports.

`run_benchmark(BenchSettings(...))` returns a `BenchResult` (JSON schema `tokenpose-bench/1`,
documented in `tokenpose.bench.harness`); `tokenpose.bench.report` turns it into markdown and a plot.
"""

from tokenpose.bench.harness import (
    DEFAULT_ENGINES,
    ENGINES,
    SCHEMA,
    BenchError,
    BenchResult,
    BenchSettings,
    latency_stats,
    measure_matmul_peak,
    run_benchmark,
)
from tokenpose.bench.report import markdown_report, plot_throughput

__all__ = [
    "DEFAULT_ENGINES",
    "ENGINES",
    "SCHEMA",
    "BenchError",
    "BenchResult",
    "BenchSettings",
    "latency_stats",
    "markdown_report",
    "measure_matmul_peak",
    "plot_throughput",
    "run_benchmark",
]
