"""The benchmark harness used by `tokenpose-bench`, one module per job:

settings      the `--engines` table, `BenchSettings` and its checks (standard library only)
results       the result records and their JSON schema `tokenpose-bench/1`
provenance    CPU, GPU, versions, threads, load average of the machine
peak          the matmul-peak probe
preparation   making (exporting) and opening the engines
memory        peak memory of a call
timing        timing engines side by side at one batch size
pipeline      the end-to-end `PosePredictor` scenario
harness       `run_benchmark`: all of the above for every variant
report        markdown and the throughput plot

`tokenpose.bench.harness.run_benchmark(BenchSettings(...))` returns a `BenchResult`;
`tokenpose.bench.report` renders it. This package re-exports nothing, so that importing
`tokenpose.bench.settings` (which the CLI's help reads) loads no torch.
"""
