"""The benchmark harness behind `tokenpose-bench`: one timing loop for every engine (DESIGN 10).

What it does, per variant:

1. makes the engines named by `--engines` on demand: the weights go to `<work_dir>/<variant>/`
   as a `.pth` (random weights with a fixed seed unless `--checkpoint`), the ONNX / FP16 / INT8
   models and TensorRT engines are written there by `tokenpose.export.pipeline.export_model` and
   reused while their manifest matches those weights; every engine is opened with `load_engine`.
   Engines that cannot run here (no GPU, no TensorRT, no calibration data, an export or load
   error) are listed in `skipped` with the reason, never dropped silently;
2. times every engine at every batch size on the same seeded input, in interleaved rounds
   (round r runs each engine once), so slow drifts of a shared machine hit all engines alike and
   the ratios between them stay meaningful. CPU and host-to-host GPU calls are timed with
   `perf_counter`; the torch engine on CUDA is timed from a device tensor with CUDA events
   (optionally as a CUDA graph), which is trtexec's "GPU compute time";
3. records per call the process CPU time (CPU utilisation = CPU s / wall s, at most the thread
   count: less means other processes took the cores) and the peak memory: on Linux the peak RSS
   during the call (VmHWM, reset through /proc/self/clear_refs before each call), on CUDA the
   torch allocator's max allocated (the torch engine) or the device memory in use (others);
4. measures the machine's matmul peak with a large square GEMM in each (library, precision,
   device) that an engine used, in the same run, and puts the achieved GFLOP/s (true FLOPs from
   `tokenpose.models.complexity`) beside it as a fraction;
5. optionally (`pipeline=True`) runs real COCO images with N person boxes each through
   `PosePredictor` (crop, engine, decode) and reports persons/s and the share of time spent
   outside the engine (image decoding from disk is excluded: images are read before timing).

JSON schema `tokenpose-bench/1` (`BenchResult.to_dict()`; every time in ms, memory in MiB):

    schema          "tokenpose-bench/1"
    created         ISO-8601 UTC time the run finished
    command         the command line
    settings        the BenchSettings (variants, engines, engine_files, batches, warmup, iters,
                    seconds, device, threads, cuda_graphs, interleave, settle_ms, pipeline, persons,
                    pipeline_images, work_dir, checkpoint, calib_data, calib_size, peak_size, seed)
    provenance      cpu {model, logical_cores, affinity_cores, flags}, load_average {start, end},
                    gpu {name, driver, cuda, cudnn} or null, versions {library: version},
                    threads {torch_intra_op, torch_inter_op, onnxruntime_intra_op, env}, python,
                    platform
    complexity[]    per variant: variant, input_hw, heatmap_hw, params, paper_params_m,
                    gflops_paper_convention, paper_gflops, true_gflops, true_gflops_attention
    peaks[]         library, precision, device, size (n of the n x n x n GEMM), gflops_per_s
                    (GOP/s for int8), repeats, error (null unless the GEMM could not run)
    rows[]          variant, engine (the --engines name or the file name), backend, precision,
                    device, batch, status ("ok" | "failed"), reason, timing ("wall_clock" |
                    "cuda_events" | "cuda_graph"), iters, latency_ms {p50, p90, p99, mean, min,
                    max}, throughput_ips (images/s = batch / mean latency), cpu_util,
                    memory {kind, peak_mb, delta_mb}, params, gflops_paper_convention,
                    true_gflops (per image), achieved_gflops_per_s, peak_gflops_per_s,
                    peak_fraction, speedup_vs_torch (throughput / torch eager FP32's at the same
                    variant, batch and device; null without a torch row), artifact
    skipped[]       variant, engine, reason
    pipeline[]      variant, engine, precision, persons_per_image, images, total_ms_per_image,
                    engine_ms_per_image, outside_engine_share, persons_per_s, images_per_s,
                    status, reason
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose.errors import TokenPoseError
from tokenpose.files import atomic_write
from tokenpose.models.config import get_config, list_variants

__all__ = [
    "DEFAULT_ENGINES",
    "ENGINES",
    "SCHEMA",
    "BenchError",
    "BenchResult",
    "BenchRow",
    "BenchSettings",
    "EngineSpec",
    "LatencyStats",
    "MatmulPeak",
    "PipelineRow",
    "SkippedEngine",
    "collect_provenance",
    "latency_stats",
    "measure_matmul_peak",
    "parse_batches",
    "parse_names",
    "run_benchmark",
]

SCHEMA = "tokenpose-bench/1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_COCO_JSON = REPO_ROOT / "tests" / "fixtures" / "coco_mini" / "annotations" / "person_keypoints_mini.json"
DEFAULT_WORK_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tokenpose" / "bench"


class BenchError(TokenPoseError):
    """Bad benchmark settings, or a run that produced nothing to report."""


@dataclass(frozen=True)
class EngineSpec:
    """One `--engines` name: which backend, in which precision, from which artifact."""

    name: str
    backend: str  # "torch", "onnxruntime", "tensorrt"
    precision: str  # "fp32", "fp16", "bf16", "int8"
    suffix: str  # the artifact's suffix: ".pth", ".onnx", ".engine"


ENGINES: dict[str, EngineSpec] = {
    s.name: s
    for s in (
        EngineSpec("torch", "torch", "fp32", ".pth"),
        EngineSpec("torch-bf16", "torch", "bf16", ".pth"),
        EngineSpec("torch-fp16", "torch", "fp16", ".pth"),
        EngineSpec("onnx", "onnxruntime", "fp32", ".onnx"),
        EngineSpec("onnx-fp16", "onnxruntime", "fp16", ".onnx"),
        EngineSpec("onnx-int8", "onnxruntime", "int8", ".onnx"),
        EngineSpec("trt-fp32", "tensorrt", "fp32", ".engine"),
        EngineSpec("trt-fp16", "tensorrt", "fp16", ".engine"),
        EngineSpec("trt-int8", "tensorrt", "int8", ".engine"),
    )
}
DEFAULT_ENGINES = ("torch", "onnx", "onnx-fp16", "onnx-int8", "trt-fp16", "trt-int8")
BASELINE_ENGINE = "torch"  # PyTorch eager FP32: what speedups are relative to


# ----------------------------------------------------------------------------- settings


def parse_names(text: str | Sequence[str] | None, what: str, valid: Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b,c'] -> ['a', 'b', 'c'], each checked against `valid` ('all' = every one)."""
    if text is None:
        return []
    parts = [text] if isinstance(text, str) else list(text)
    names = [n.strip() for p in parts for n in str(p).split(",") if n.strip()]
    if names == ["all"]:
        return list(valid)
    bad = [n for n in names if n not in valid]
    if bad:
        raise BenchError(f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    return list(dict.fromkeys(names))


def parse_batches(text: str | Sequence[int]) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; every batch size must be an integer >= 1."""
    parts = str(text).split(",") if isinstance(text, str) else list(text)
    out = []
    for p in parts:
        try:
            b = int(str(p).strip())
        except ValueError:
            raise BenchError(f"batch sizes must be integers like 1,8,32; got {text!r}") from None
        if b < 1:
            raise BenchError(f"batch sizes must be >= 1, got {b}")
        out.append(b)
    if not out:
        raise BenchError("no batch size given")
    return list(dict.fromkeys(out))


@dataclass
class BenchSettings:
    """What to measure. Validated by `check()`; see the module docstring for the JSON fields."""

    variants: list[str] = field(default_factory=lambda: ["s-v2"])
    engines: list[str] = field(default_factory=lambda: list(DEFAULT_ENGINES))
    engine_files: list[str] = field(default_factory=list)  # artifacts opened as they are (--engine)
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    warmup: int = 2
    iters: int = 10
    seconds: float | None = None  # per engine and batch size; replaces iters when set
    device: str = "auto"  # "auto", "cpu", "cuda"
    threads: int = 0  # intra-op threads for torch and ONNX Runtime; 0: the libraries' defaults
    cuda_graphs: bool = False
    interleave: bool = True
    settle_ms: float = 50.0  # idle pause before each timed call (see _time_batch)
    pipeline: bool = False
    persons: int = 8
    pipeline_images: int = 4
    work_dir: str = str(DEFAULT_WORK_DIR)
    checkpoint: str | None = None
    calib_data: str | None = str(DEFAULT_COCO_JSON) if DEFAULT_COCO_JSON.is_file() else None
    calib_size: int = 32
    pipeline_data: str | None = str(DEFAULT_COCO_JSON) if DEFAULT_COCO_JSON.is_file() else None
    peak_size: int = 0  # n of the peak GEMM; 0: 2048 on CPU, 8192 on CUDA
    seed: int = 0

    def check(self) -> BenchSettings:
        """Raise BenchError naming the first bad value; resolve names and the device."""
        self.variants = parse_names(self.variants, "variant", list_variants())
        if not self.variants:
            raise BenchError("no variant given")
        self.engines = parse_names(self.engines, "engine", list(ENGINES))
        self.batches = parse_batches(self.batches)
        from tokenpose.engines.base import BACKENDS

        for f in self.engine_files:
            if Path(f).suffix.lower() not in BACKENDS:
                raise BenchError(f"--engine {f}: unknown engine file type; expected one of {', '.join(BACKENDS)}")
            if not Path(f).is_file():
                raise BenchError(f"--engine {f}: file not found")
        if not self.engines and not self.engine_files:
            raise BenchError("nothing to benchmark: give --engines names or --engine files")
        for name, value, low in (("--iters", self.iters, 1), ("--warmup", self.warmup, 0),
                                 ("--threads", self.threads, 0), ("--persons", self.persons, 1),
                                 ("--pipeline-images", self.pipeline_images, 1), ("--calib-size", self.calib_size, 1),
                                 ("--peak-size", self.peak_size, 0), ("--settle-ms", self.settle_ms, 0)):
            if int(value) < low:
                raise BenchError(f"{name} must be >= {low}, got {value}")
        if self.seconds is not None and not self.seconds > 0:
            raise BenchError(f"--seconds must be > 0, got {self.seconds}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise BenchError(f"--device must be auto, cpu or cuda; got {self.device!r}")
        import torch

        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        elif self.device == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda: PyTorch sees no CUDA device here")
        if self.cuda_graphs and self.device != "cuda":
            raise BenchError("--cuda-graphs needs --device cuda")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise BenchError(f"--checkpoint {self.checkpoint}: file not found")
        if self.checkpoint is not None and len(self.variants) > 1:
            raise BenchError("--checkpoint holds one variant's weights: give exactly one --variant with it")
        if self.pipeline and (self.pipeline_data is None or not Path(self.pipeline_data).is_file()):
            raise BenchError(f"--pipeline needs a COCO keypoints json with person boxes (--pipeline-data), "
                             f"not found: {self.pipeline_data}")
        return self


# ----------------------------------------------------------------------------- result records


@dataclass
class LatencyStats:
    """Latency of one call (one batch) in milliseconds; percentiles by linear interpolation."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """Percentiles p50 <= p90 <= p99 and mean/min/max of `samples_ms` (at least one sample)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise BenchError("no timing samples")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return LatencyStats(float(p50), float(p90), float(p99), float(x.mean()), float(x.min()), float(x.max()))


@dataclass
class MatmulPeak:
    library: str
    precision: str
    device: str
    size: int
    gflops_per_s: float | None  # GOP/s for int8
    repeats: int
    error: str | None = None


@dataclass
class BenchRow:
    variant: str
    engine: str
    backend: str
    precision: str
    device: str
    batch: int
    status: str  # "ok" or "failed"
    reason: str | None = None
    timing: str | None = None
    iters: int = 0
    latency_ms: LatencyStats | None = None
    throughput_ips: float | None = None
    cpu_util: float | None = None
    memory: dict[str, Any] | None = None  # {kind, peak_mb, delta_mb}
    params: int | None = None
    gflops_paper_convention: float | None = None
    true_gflops: float | None = None
    achieved_gflops_per_s: float | None = None
    peak_gflops_per_s: float | None = None
    peak_fraction: float | None = None
    speedup_vs_torch: float | None = None
    artifact: str | None = None


@dataclass
class SkippedEngine:
    variant: str
    engine: str
    reason: str


@dataclass
class PipelineRow:
    variant: str
    engine: str
    precision: str
    persons_per_image: int
    images: int
    status: str = "ok"
    reason: str | None = None
    total_ms_per_image: float | None = None
    engine_ms_per_image: float | None = None
    outside_engine_share: float | None = None
    persons_per_s: float | None = None
    images_per_s: float | None = None


@dataclass
class BenchResult:
    settings: dict[str, Any]
    provenance: dict[str, Any]
    complexity: list[dict[str, Any]] = field(default_factory=list)
    peaks: list[MatmulPeak] = field(default_factory=list)
    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[SkippedEngine] = field(default_factory=list)
    pipeline: list[PipelineRow] = field(default_factory=list)
    command: str = ""
    created: str = ""
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        order = ["schema", "created", "command", "settings", "provenance", "complexity", "peaks", "rows",
                 "skipped", "pipeline"]
        return json.loads(json.dumps({k: d[k] for k in order}))

    def write_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_write(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path


# ----------------------------------------------------------------------------- provenance


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The instruction-set flags that decide GEMM speed (AVX-512, VNNI, AMX, FP16)."""
    interesting = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                   "amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "asimd", "sve")
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in interesting if f in have]
    return []


def _gpu_info() -> dict[str, Any] | None:
    import torch

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
    from importlib import metadata

    from tokenpose.manifest import library_versions

    out = dict(library_versions())
    for dist in ("numpy", "opencv-python-headless", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def collect_provenance(threads: int = 0) -> dict[str, Any]:
    """Where and with what a run was made: CPU, GPU, library versions, thread settings, load."""
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "CUDA_VISIBLE_DEVICES") if k in os.environ}
    return {
        "cpu": {"model": _cpu_model(), "logical_cores": os.cpu_count(), "affinity_cores": affinity,
                "flags": _cpu_flags()},
        "load_average": {"start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "end": None},
        "gpu": _gpu_info(),
        "versions": _versions(),
        "threads": {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
                    "onnxruntime_intra_op": threads or "default (one per physical core)", "env": env},
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ----------------------------------------------------------------------------- memory


_CLEAR_REFS = Path("/proc/self/clear_refs")


def _read_status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _MemoryProbe:
    """Peak memory of the calls made between `before()` and `after()`, max over calls, in MiB."""

    def __init__(self, device: str, torch_engine: bool) -> None:
        self.device = device
        self.torch_engine = torch_engine
        self.peak_mb = 0.0
        self.delta_mb = 0.0
        self.kind = "rss"
        self._base = 0.0

    def before(self) -> None:
        if self.device == "cuda":
            import torch

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
            import torch

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


# ----------------------------------------------------------------------------- matmul peak


def _ort_gemm_model(n: int, precision: str):
    import onnx
    from onnx import TensorProto, helper

    if precision == "int8":  # MLAS's u8 x s8 -> s32 kernel: what ONNX Runtime's Q/DQ MatMuls run on
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        t = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
        a, b, y = (helper.make_tensor_value_info(name, t, [n, n]) for name in "aby")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "gemm", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _best_rate(run: Callable[[], float], flops: float, repeats: int) -> float:
    """Best (highest) FLOP/s over `repeats` timed runs after one warm-up: the least-disturbed run."""
    run()
    return max(flops / run() for _ in range(repeats)) / 1e9


def measure_matmul_peak(library: str, precision: str, device: str, n: int = 0, threads: int = 0,
                        repeats: int = 3) -> MatmulPeak:
    """GFLOP/s (GOP/s for int8) of an n x n x n matmul in `library` ("torch" / "onnxruntime"),
    `precision` and `device`: 2 n^3 operations per run, best of `repeats`.

    TensorRT engines are compared with the cuBLAS peak of the same precision (torch on CUDA).
    Failures (a precision without a kernel here) are recorded in `error`, not raised.
    """
    n = n or (8192 if device == "cuda" else 2048)
    flops = 2.0 * n**3
    try:
        if library in ("torch", "tensorrt"):
            import torch

            dev = torch.device(device)
            if precision == "int8":
                if dev.type != "cuda":
                    raise BenchError("int8 matmul peak on CPU is measured with onnxruntime, not torch")
                a = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=dev)
                b = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=dev)
                mm = lambda: torch._int_mm(a, b)
            else:
                dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
                a = torch.randn(n, n, device=dev).to(dtype)
                b = torch.randn(n, n, device=dev).to(dtype)
                mm = lambda: torch.matmul(a, b)

            if dev.type == "cuda":
                def run() -> float:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(10):
                        mm()
                    end.record()
                    end.synchronize()
                    return start.elapsed_time(end) / 1e3 / 10
            else:
                def run() -> float:
                    with torch.inference_mode():
                        t0 = time.perf_counter()
                        mm()
                        return time.perf_counter() - t0
            rate = _best_rate(run, flops, repeats)
            lib = "torch (cuBLAS)" if library == "tensorrt" else "torch"
        elif library == "onnxruntime":
            import onnxruntime as ort

            if device != "cpu":
                raise BenchError("the onnxruntime peak is measured on the CPU only")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            sess = ort.InferenceSession(_ort_gemm_model(n, precision).SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
            rng = np.random.default_rng(0)
            if precision == "int8":
                feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                         "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
            else:
                dt = np.float16 if precision == "fp16" else np.float32
                feeds = {"a": rng.standard_normal((n, n)).astype(dt), "b": rng.standard_normal((n, n)).astype(dt)}

            def run() -> float:
                t0 = time.perf_counter()
                sess.run(None, feeds)
                return time.perf_counter() - t0
            rate = _best_rate(run, flops, repeats)
            lib = "onnxruntime"
        else:
            raise BenchError(f"no matmul peak for library {library!r}")
    except Exception as exc:  # noqa: BLE001 - a missing kernel must not end the benchmark: record why
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return MatmulPeak(library, precision, device, n, None, repeats, error=text[:300])
    return MatmulPeak(lib, precision, device, n, rate, repeats)


# ----------------------------------------------------------------------------- engines


@dataclass
class _Prepared:
    name: str
    engine: Any
    backend: str
    precision: str
    artifact: str | None


def _weights_file(variant: str, work: Path, checkpoint: str | None, seed: int) -> Path:
    """The `.pth` every engine of `variant` is made from: the checkpoint, or seeded random weights."""
    if checkpoint is not None:
        return Path(checkpoint)
    path = work / f"tokenpose_{variant}_random{seed}.pth"
    if not path.is_file():
        import torch

        from tokenpose.models import create_model
        from tokenpose.models.checkpoints import save_weights

        torch.manual_seed(seed)
        save_weights(create_model(variant), path, variant=variant, random_weights=True)
    return path


def _cached_artifact(path: Path, weights_sha: str, settings: BenchSettings) -> bool:
    """True when `path` and its manifest exist, match, and were made from these weights with what
    this run asks for: a batch range up to its largest batch (an engine profile is fixed at build
    time) and, for INT8, the same calibration data and size."""
    from tokenpose.manifest import verify_manifest

    if not path.is_file():
        return False
    try:
        manifest = verify_manifest(path)
    except TokenPoseError:
        return False
    if manifest.checkpoint_sha256 != weights_sha or manifest.batch.get("max", 0) < max(settings.batches):
        return False
    if manifest.precision == "int8":
        calib = manifest.calibration or {}
        source = calib.get("source")
        if (settings.calib_data is None or source is None
                or Path(source).resolve() != Path(settings.calib_data).resolve()
                or calib.get("num_crops") != settings.calib_size):
            return False
    return True


def _export_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"export failed: {text}"


def prepare_engines(settings: BenchSettings, variant: str, log: Callable[[str], None]
                    ) -> tuple[list[_Prepared], list[SkippedEngine]]:
    """Make (export if needed) and open every engine `settings.engines` names for `variant`."""
    from tokenpose.engines.base import load_engine
    from tokenpose.manifest import BatchRange, sha256_file
    from tokenpose.export.pipeline import (
        ExportOptions,
        artifact_name,
        ensure_writable_dir,
        export_model,
    )
    from tokenpose.export.tensorrt import tensorrt_unavailable_reason

    cfg = get_config(variant)
    device = settings.device
    skipped: list[SkippedEngine] = []
    wanted: list[EngineSpec] = []
    for name in settings.engines:
        spec = ENGINES[name]
        reason = None
        if spec.backend == "tensorrt":
            if device != "cuda":
                reason = "TensorRT needs an NVIDIA GPU and this run is on the CPU (no CUDA device visible)"
            else:
                reason = tensorrt_unavailable_reason()
        elif spec.backend == "onnxruntime" and device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                reason = "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        if spec.precision == "int8" and settings.calib_data is None:
            reason = reason or "INT8 needs calibration crops: pass --calib-data (a COCO keypoints json or an image folder)"
        if spec.backend == "torch" and spec.precision == "fp16" and device == "cpu":
            reason = "FP16 autocast is a GPU precision; on the CPU use torch-bf16"
        if reason:
            skipped.append(SkippedEngine(variant, name, reason))
        else:
            wanted.append(spec)
    if not wanted:
        return [], skipped

    work = ensure_writable_dir(Path(settings.work_dir) / variant)
    weights = _weights_file(variant, work, settings.checkpoint, settings.seed)
    weights_sha = sha256_file(weights)

    # Export what is missing in one export_model call (it always writes FP32 first).
    artifacts: dict[str, Path] = {}
    for spec in wanted:
        if spec.backend != "torch":
            artifacts[spec.name] = work / artifact_name(cfg.name, spec.precision, spec.suffix)
    missing = [s for s in wanted if s.name in artifacts and not _cached_artifact(artifacts[s.name], weights_sha, settings)]
    export_error = None
    if missing:
        want_precisions = {s.precision for s in missing}
        options = ExportOptions(
            variant=cfg.name, out_dir=work, checkpoint=weights, fp16="fp16" in want_precisions,
            int8="int8" in want_precisions, calib_data=Path(settings.calib_data) if settings.calib_data else None,
            calib_size=settings.calib_size, batch=BatchRange(1, min(8, max(settings.batches)), max(settings.batches)),
            engine=any(s.backend == "tensorrt" for s in missing),
        )
        log(f"{cfg.name}: exporting {', '.join(s.name for s in missing)} into {work}")
        try:
            export_model(options, log=lambda msg: log(f"  {msg}"))
        except (TokenPoseError, ValueError, OSError, RuntimeError) as exc:
            export_error = _export_reason(exc)

    prepared: list[_Prepared] = []
    for spec in wanted:
        if spec.backend == "torch":
            path = weights
            options = {"variant": cfg.name, "device": device, "precision": spec.precision}
        else:
            path = artifacts[spec.name]
            if not path.is_file():
                skipped.append(SkippedEngine(variant, spec.name, export_error or f"export did not write {path.name}"))
                continue
            options = {"device": "cpu" if device == "cpu" else ("cuda" if spec.backend == "onnxruntime" else None)}
            if spec.backend == "onnxruntime":
                options["threads"] = settings.threads or None
            options = {k: v for k, v in options.items() if v is not None}
        try:
            engine = load_engine(path, **options)
        except (TokenPoseError, ValueError, OSError, RuntimeError) as exc:
            skipped.append(SkippedEngine(variant, spec.name, f"cannot open {path.name}: {_first_line(exc)}"))
            continue
        prepared.append(_Prepared(spec.name, engine, spec.backend, spec.precision, str(path)))
    return prepared, skipped


def _open_files(settings: BenchSettings, log: Callable[[str], None]
                ) -> tuple[dict[str, list[_Prepared]], list[SkippedEngine]]:
    """`--engine` files, grouped by the variant their manifest names."""
    from tokenpose.engines.base import load_engine

    by_variant: dict[str, list[_Prepared]] = {}
    skipped = []
    for f in settings.engine_files:
        path = Path(f)
        options: dict[str, Any] = {}
        if path.suffix == ".onnx":
            options = {"device": settings.device, **({"threads": settings.threads} if settings.threads else {})}
        elif path.suffix == ".pth":  # the variant comes from the checkpoint's metadata or key shapes
            options = {"device": settings.device}
        try:
            engine = load_engine(path, **options)
        except (TokenPoseError, ValueError, OSError, RuntimeError) as exc:
            skipped.append(SkippedEngine("?", path.name, f"cannot open {path.name}: {_first_line(exc)}"))
            continue
        log(f"opened {path.name}: {engine.name} {engine.precision}, variant {engine.config.name}")
        by_variant.setdefault(engine.config.name, []).append(
            _Prepared(path.name, engine, engine.name, engine.precision, str(path)))
    return by_variant, skipped


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- timing


class _Runner:
    """One engine at one batch size: `call()` runs it once and returns the latency in ms."""

    def __init__(self, prep: _Prepared, images: np.ndarray, device: str, cuda_graphs: bool) -> None:
        self.prep = prep
        self.images = images
        self.device = device
        self.samples: list[float] = []
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.error: str | None = None
        self.memory = _MemoryProbe(device, prep.backend == "torch")
        self.timing = "wall_clock"
        self._device_call: Callable[[], None] | None = None
        if device == "cuda" and prep.backend == "torch":
            self._device_call = self._torch_cuda_call(cuda_graphs)
            self.timing = "cuda_graph" if cuda_graphs else "cuda_events"

    def _torch_cuda_call(self, cuda_graphs: bool) -> Callable[[], None]:
        """The torch model on a device-resident batch (what trtexec's GPU compute time covers)."""
        import torch

        engine = self.prep.engine
        model = engine.model
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(engine.precision)
        x = torch.from_numpy(self.images).to(engine.device)

        def forward():
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                return model(x)

        if not cuda_graphs:
            return forward
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream before capture, as torch.cuda.graphs asks
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            forward()
        return graph.replay

    def call(self, record: bool) -> None:
        if self.error is not None:
            return
        try:
            if record:
                self.memory.before()
            c0, t0 = time.process_time(), time.perf_counter()
            if self._device_call is not None:
                import torch

                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                self._device_call()
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                out = self.prep.engine(self.images)
                ms = (time.perf_counter() - t0) * 1e3
                if not isinstance(out, np.ndarray) or out.shape[0] != self.images.shape[0]:
                    raise BenchError(f"engine returned {getattr(out, 'shape', type(out).__name__)} "
                                     f"for a batch of {self.images.shape[0]}")
            if record:
                self.cpu_s += time.process_time() - c0
                self.wall_s += time.perf_counter() - t0
                self.memory.after()
                self.samples.append(ms)
        except Exception as exc:  # noqa: BLE001 - an engine failing at one batch size (OOM, max batch) is a row
            self.error = _first_line(exc)[:500]


def _time_batch(runners: list[_Runner], settings: BenchSettings, log: Callable[[str], None]) -> None:
    """Warm up, then time every runner; interleaved rounds unless settings.interleave is False.

    Before each timed call the harness idles `settle_ms`: thread pools (ONNX Runtime's, OpenMP's)
    spin-wait for a while after a call, and without the pause one engine's spinning workers would
    take the cores from the next engine in the round.
    """
    groups = [runners] if settings.interleave else [[r] for r in runners]
    for group in groups:
        for _ in range(settings.warmup):
            for r in group:
                r.call(record=False)
        start = time.perf_counter()
        budget = ((settings.seconds or 0.0) + settings.settle_ms / 1e3) * len(group)
        rounds = 0
        while True:
            for r in group:
                if settings.settle_ms:
                    time.sleep(settings.settle_ms / 1e3)
                r.call(record=True)
            rounds += 1
            if all(r.error is not None for r in group):
                break
            if settings.seconds is None:
                if rounds >= settings.iters:
                    break
            elif rounds >= 2 and time.perf_counter() - start >= budget:
                break


# ----------------------------------------------------------------------------- pipeline


class _TimedEngine:
    """An Engine that adds up the wall time spent inside the wrapped engine's calls."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.name, self.precision = engine.name, engine.precision
        self.config, self.manifest, self.max_batch = engine.config, engine.manifest, engine.max_batch
        self.seconds = 0.0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.engine(images)
        finally:
            self.seconds += time.perf_counter() - t0


def pipeline_scenes(coco_json: str | os.PathLike, persons: int, count: int, seed: int = 0
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (BGR image, (persons, 4) boxes) pairs from a COCO keypoints json.

    Images with the most person boxes come first; each image's ground-truth person boxes are
    tiled (and jittered by up to 5% of their size after the first copy) to exactly `persons`.
    """
    from tokenpose.data.transforms import read_image

    path = Path(coco_json)
    data = json.loads(path.read_text())
    boxes: dict[int, list[list[float]]] = {}
    for a in data.get("annotations", []):
        if a.get("iscrowd", 0) or a.get("category_id", 1) != 1:
            continue
        x, y, w, h = a["bbox"]
        if w > 1 and h > 1:
            boxes.setdefault(a["image_id"], []).append([x, y, w, h])
    images = {im["id"]: im for im in data.get("images", [])}
    ranked = sorted((i for i in boxes if i in images), key=lambda i: (-len(boxes[i]), i))
    if not ranked:
        raise BenchError(f"{path}: no person boxes to build pipeline scenes from")
    folder = path.parent.parent / "images"
    rng = np.random.default_rng(seed)
    scenes = []
    for image_id in ranked[:count]:
        image = read_image(folder / images[image_id]["file_name"])
        gt = np.asarray(boxes[image_id], dtype=np.float64)
        tiled = np.resize(gt, (persons, 4))
        jitter = rng.uniform(-0.05, 0.05, (persons, 4)) * tiled[:, [2, 3, 2, 3]]
        jitter[: len(gt)] = 0.0
        tiled = tiled + jitter
        h, w = image.shape[:2]
        tiled[:, 0] = np.clip(tiled[:, 0], 0, w - 2)
        tiled[:, 1] = np.clip(tiled[:, 1], 0, h - 2)
        tiled[:, 2] = np.clip(tiled[:, 2], 2, w - tiled[:, 0])
        tiled[:, 3] = np.clip(tiled[:, 3], 2, h - tiled[:, 1])
        scenes.append((image, tiled))
    return scenes


def run_pipeline(prep: _Prepared, variant: str, scenes: list[tuple[np.ndarray, np.ndarray]],
                 persons: int, warmup: int) -> PipelineRow:
    """Time `PosePredictor.predict` over the scenes (one call per image, all its boxes in one batch)."""
    from tokenpose.engines.predictor import PosePredictor

    row = PipelineRow(variant, prep.name, prep.precision, persons, len(scenes))
    timed = _TimedEngine(prep.engine)
    try:
        predictor = PosePredictor(timed, batch_size=max(persons, 1))
        for image, boxes in scenes[: max(warmup, 0)]:
            predictor.predict(image, boxes)
        timed.seconds = 0.0
        t0 = time.perf_counter()
        for image, boxes in scenes:
            predictor.predict(image, boxes)
        total = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - report the failure as the row, keep the other engines
        row.status, row.reason = "failed", _first_line(exc)[:500]
        return row
    n = len(scenes)
    row.total_ms_per_image = total / n * 1e3
    row.engine_ms_per_image = timed.seconds / n * 1e3
    row.outside_engine_share = max(0.0, 1.0 - timed.seconds / total)
    row.persons_per_s = persons * n / total
    row.images_per_s = n / total
    return row


# ----------------------------------------------------------------------------- the run


def _peak_key(prep: _Prepared, device: str) -> tuple[str, str, str]:
    precision = prep.precision
    if prep.backend == "onnxruntime" and device == "cuda":
        return ("torch", precision if precision != "int8" else "int8", device)
    return (prep.backend, precision, device)


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] = lambda _m: None,
                  command: str | None = None) -> BenchResult:
    """Run everything `settings` asks for and return the result (see the module docstring)."""
    import torch

    from tokenpose.export.onnx import synthetic_inputs
    from tokenpose.models.complexity import measure

    settings.check()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    result = BenchResult(settings=asdict(settings), provenance=collect_provenance(settings.threads),
                         command=command if command is not None else _command_line())

    file_engines, file_skipped = _open_files(settings, log)
    result.skipped.extend(file_skipped)
    variants = list(settings.variants) if settings.engines else []
    variants += [v for v in file_engines if v not in variants]
    peaks: dict[tuple[str, str, str], MatmulPeak] = {}
    scenes = None

    for variant in variants:
        from_files = file_engines.get(variant, [])
        # A file's variant may be outside the table (a reduced config): its engine knows its sizes,
        # but its FLOPs are unknown (the ONNX engine's config for such a variant is a placeholder).
        cfg = get_config(variant) if variant in list_variants() else from_files[0].engine.config
        comp = measure(cfg) if variant in list_variants() else None
        if comp is not None:
            result.complexity.append(comp.as_dict())
        named = settings.engines and variant in settings.variants
        prepared, skipped = prepare_engines(settings, variant, log) if named else ([], [])
        prepared += from_files
        result.skipped.extend(skipped)
        for s in skipped:
            log(f"{variant}: {s.engine} skipped: {s.reason}")
        if not prepared:
            continue
        _measure_peaks(prepared, peaks, settings, log)
        for batch in settings.batches:
            images = synthetic_inputs(cfg, batch, seed=settings.seed)
            runners = []
            for prep in prepared:
                try:
                    runners.append(_Runner(prep, images, settings.device, settings.cuda_graphs))
                except Exception as exc:  # noqa: BLE001 - e.g. CUDA graph capture failing: a failed row
                    result.rows.append(BenchRow(variant, prep.name, prep.backend, prep.precision, settings.device,
                                                batch, "failed", reason=_first_line(exc)[:500], artifact=prep.artifact))
            log(f"{variant}: batch {batch}: timing {', '.join(r.prep.name for r in runners)}")
            _time_batch(runners, settings, log)
            for r in runners:
                result.rows.append(_row(r, variant, batch, comp, settings.device))
                row = result.rows[-1]
                if row.status == "ok":
                    log(f"  {row.engine:<12} p50 {row.latency_ms.p50:9.2f} ms  {row.throughput_ips:8.2f} img/s")
                else:
                    log(f"  {row.engine:<12} failed: {row.reason}")
        _measure_peaks(prepared, peaks, settings, log)
        if settings.pipeline:
            if scenes is None:
                scenes = pipeline_scenes(settings.pipeline_data, settings.persons, settings.pipeline_images,
                                         settings.seed)
            for prep in prepared:
                log(f"{variant}: pipeline, {settings.persons} persons per image: {prep.name}")
                result.pipeline.append(run_pipeline(prep, variant, scenes, settings.persons, warmup=1))

    result.peaks = list(peaks.values())
    _fill_derived(result, peaks)
    result.provenance["load_average"]["end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if not result.rows and not result.skipped:
        raise BenchError("nothing was measured")
    return result


def _command_line() -> str:
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("-c", "-m", "") else "tokenpose-bench"
    return " ".join([prog, *map(shlex.quote, sys.argv[1:])])


def _measure_peaks(prepared: list[_Prepared], peaks: dict[tuple[str, str, str], MatmulPeak],
                   settings: BenchSettings, log: Callable[[str], None]) -> None:
    """Measure the matmul peak of every engine's (library, precision, device), keeping the best.

    Called before and after the timed runs of a variant: on a shared machine the better of the
    two is the closer to the machine's limit.
    """
    for key in dict.fromkeys(_peak_key(p, settings.device) for p in prepared):
        log(f"matmul peak: {key[0]} {key[1]} on {key[2]}")
        new = measure_matmul_peak(*key, n=settings.peak_size, threads=settings.threads)
        old = peaks.get(key)
        if old is None or (new.gflops_per_s or 0) > (old.gflops_per_s or 0):
            if old is not None:
                new.repeats += old.repeats
            peaks[key] = new
        else:
            old.repeats += new.repeats


def _row(r: _Runner, variant: str, batch: int, comp, device: str) -> BenchRow:
    p = r.prep
    row = BenchRow(variant, p.name, p.backend, p.precision, device, batch, "ok", timing=r.timing,
                   iters=len(r.samples), artifact=p.artifact)
    if comp is not None:
        row.params, row.gflops_paper_convention, row.true_gflops = (
            comp.params, comp.gflops_paper_convention, comp.true_gflops)
    if r.error is not None or not r.samples:
        row.status, row.reason = "failed", r.error or "no timed call completed"
        return row
    stats = latency_stats(r.samples)
    row.latency_ms = stats
    row.throughput_ips = batch / (stats.mean / 1e3)
    row.cpu_util = r.cpu_s / r.wall_s if r.wall_s > 0 and r.timing == "wall_clock" else None
    row.memory = r.memory.as_dict()
    if comp is not None:
        row.achieved_gflops_per_s = comp.true_gflops * row.throughput_ips
    return row


def _fill_derived(result: BenchResult, peaks: dict[tuple[str, str, str], MatmulPeak]) -> None:
    """Peak fraction and speedup vs PyTorch eager FP32, for the rows that ran."""
    base: dict[tuple[str, int, str], float] = {}
    for r in sorted(result.rows, key=lambda r: r.engine != BASELINE_ENGINE):  # the named engine first
        if r.backend == "torch" and r.precision == "fp32" and r.status == "ok":
            base.setdefault((r.variant, r.batch, r.device), r.throughput_ips)
    for r in result.rows:
        if r.status != "ok":
            continue
        peak = peaks.get(_peak_key(_Prepared(r.engine, None, r.backend, r.precision, None), r.device))
        if peak is not None and peak.gflops_per_s and r.achieved_gflops_per_s is not None:
            r.peak_gflops_per_s = peak.gflops_per_s
            r.peak_fraction = r.achieved_gflops_per_s / peak.gflops_per_s
        b = base.get((r.variant, r.batch, r.device))
        if b:
            r.speedup_vs_torch = r.throughput_ips / b
