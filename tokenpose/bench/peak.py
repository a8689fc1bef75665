"""The machine's matmul peak: a large square GEMM per (library, precision, device), measured in the
same run as the engines, so an engine's achieved GFLOP/s can be given as a fraction of it.

TensorRT engines are compared with the cuBLAS peak of the same precision (torch on CUDA), and
ONNX Runtime on CUDA likewise; ONNX Runtime on the CPU with its own MLAS GEMM.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

from tokenpose.bench.results import MatmulPeak, failure_reason
from tokenpose.bench.settings import BenchError

__all__ = ["PeakKey", "measure_matmul_peak", "measure_peaks", "peak_key"]

PeakKey = tuple[str, str, str]  # (library, precision, device)


def peak_key(backend: str, precision: str, device: str) -> PeakKey:
    """Which GEMM an engine of `backend` and `precision` on `device` is compared with."""
    if (backend == "onnxruntime" and device == "cuda") or backend == "aoti":  # AOTInductor calls torch's GEMMs
        return ("torch", precision, device)
    return (backend, precision, device)


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


def _torch_gemm(precision: str, device: str, n: int) -> Callable[[], float]:
    """A function running one n x n x n torch matmul and returning its seconds."""
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
        def run() -> float:  # ten back-to-back GEMMs between two events: launch gaps averaged out
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                mm()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / 10
        return run

    def run_cpu() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            mm()
            return time.perf_counter() - t0
    return run_cpu


def _ort_gemm(precision: str, device: str, n: int, threads: int) -> Callable[[], float]:
    """A function running one n x n x n ONNX Runtime (MLAS) GEMM on the CPU and returning its seconds."""
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
    return run


def measure_matmul_peak(library: str, precision: str, device: str, n: int = 0, threads: int = 0,
                        repeats: int = 3) -> MatmulPeak:
    """GFLOP/s (GOP/s for int8) of an n x n x n matmul in `library` ("torch", "tensorrt" meaning
    cuBLAS through torch, or "onnxruntime"), `precision` and `device`: 2 n^3 operations per run,
    the best of `repeats` runs after one warm-up (the least-disturbed run).

    n = 0 means 8192 on CUDA, 2048 on the CPU. Failures (a precision without a kernel here) are
    recorded in `error`, not raised.
    """
    n = n or (8192 if device == "cuda" else 2048)
    try:
        if library in ("torch", "tensorrt"):
            run = _torch_gemm(precision, device, n)
        elif library == "onnxruntime":
            run = _ort_gemm(precision, device, n, threads)
        else:
            raise BenchError(f"no matmul peak for library {library!r}")
        run()
        rate = max(2.0 * n**3 / run() for _ in range(repeats)) / 1e9
    except Exception as exc:  # noqa: BLE001 - a missing kernel must not end the benchmark: record why
        return MatmulPeak(library, precision, device, n, None, repeats, error=failure_reason(exc, 300))
    return MatmulPeak("torch (cuBLAS)" if library == "tensorrt" else library, precision, device, n, rate, repeats)


def measure_peaks(keys: Iterable[PeakKey], peaks: dict[PeakKey, MatmulPeak], n: int, threads: int,
                  log: Callable[[str], None]) -> None:
    """Measure the peak of every key into `peaks`, keeping the better of an earlier and this figure.

    The run calls it before and after the timed runs of a variant: on a shared machine the better
    of the two is the closer to the machine's limit; `repeats` counts the runs of both.
    """
    for key in dict.fromkeys(keys):
        log(f"matmul peak: {key[0]} {key[1]} on {key[2]}")
        new = measure_matmul_peak(*key, n=n, threads=threads)
        old = peaks.get(key)
        if old is None or (new.gflops_per_s or 0) > (old.gflops_per_s or 0):
            if old is not None:
                new.repeats += old.repeats
            peaks[key] = new
        else:
            old.repeats += new.repeats
