"""Timing engines at one batch size, side by side (DESIGN 10).

Every engine gets the same seeded input and runs in interleaved rounds (round r runs each engine
once), so slow drifts of a shared machine hit all engines alike and the ratios between them stay
meaningful. CPU and host-to-host GPU calls are timed with `perf_counter`; the torch engine on
CUDA is timed from a device tensor with CUDA events (optionally as a CUDA graph), which is
trtexec's "GPU compute time". Per call the process CPU time (CPU utilisation = CPU s / wall s, at
most the thread count: less means other processes took the cores) and the peak memory
(`tokenpose.bench.memory`) are recorded too.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Hashable, Mapping

import numpy as np
import torch

from tokenpose.bench.memory import MemoryProbe
from tokenpose.bench.preparation import PreparedEngine
from tokenpose.bench.results import failure_reason
from tokenpose.bench.settings import BenchError, BenchSettings

__all__ = ["Runner", "interleaved_call_times", "time_batch"]


class Runner:
    """One engine at one batch `(B, 3, H, W)`: `call()` runs it once and records the latency in ms.

    An exception in a call (out of memory, a batch above the engine's maximum) is kept in `error`
    and ends this runner's timing; the others go on.
    """

    def __init__(self, prep: PreparedEngine, images: np.ndarray, device: str, cuda_graphs: bool) -> None:
        self.prep = prep
        self.images = images
        self.device = device
        self.samples: list[float] = []
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.error: str | None = None
        self.memory = MemoryProbe(device, prep.backend == "torch")
        self.timing = "wall_clock"
        self._device_call: Callable[[], None] | None = None
        if device == "cuda" and prep.backend == "torch":
            self._device_call = self._torch_cuda_call(cuda_graphs)
            self.timing = "cuda_graph" if cuda_graphs else "cuda_events"

    def _torch_cuda_call(self, cuda_graphs: bool) -> Callable[[], None]:
        """The torch model on a device-resident batch (what trtexec's GPU compute time covers)."""
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

    def _device_ms(self) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self._device_call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def _host_ms(self, t0: float) -> float:
        out = self.prep.engine(self.images)
        ms = (time.perf_counter() - t0) * 1e3
        if not isinstance(out, np.ndarray) or out.shape[0] != self.images.shape[0]:
            raise BenchError(f"engine returned {getattr(out, 'shape', type(out).__name__)} "
                             f"for a batch of {self.images.shape[0]}")
        return ms

    def call(self, record: bool) -> None:
        """One call; with `record`, its latency, CPU time and memory count."""
        if self.error is not None:
            return
        try:
            if record:
                self.memory.before()
            c0, t0 = time.process_time(), time.perf_counter()
            ms = self._device_ms() if self._device_call is not None else self._host_ms(t0)
            if record:
                self.cpu_s += time.process_time() - c0
                self.wall_s += time.perf_counter() - t0
                self.memory.after()
                self.samples.append(ms)
        except Exception as exc:  # noqa: BLE001 - an engine failing at one batch size (OOM, max batch) is a row
            self.error = failure_reason(exc)


def time_batch(runners: list[Runner], settings: BenchSettings) -> None:
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


def interleaved_call_times(
    calls: Mapping[Hashable, Callable[[], object]],
    rounds: int,
    *,
    warmup: int = 1,
    settle_ms: float = 50.0,
    on_round: Callable[[int], None] | None = None,
) -> tuple[dict[Hashable, list[float]], dict[Hashable, int]]:
    """Time each call once per round, in order, for the benchmark scripts: (seconds, minor faults).

    `warmup` untimed rounds first (compiles, allocator and arena growth). Before each timed call
    the process idles `settle_ms`, as `time_batch` does, so that the previous call's spin-waiting
    thread pool does not take the cores. Returns the seconds of every timed call per key and the
    minor page faults summed over a key's timed calls; `on_round(r)` after round r (1-based).
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    seconds: dict[Hashable, list[float]] = {key: [] for key in calls}
    faults: dict[Hashable, int] = dict.fromkeys(calls, 0)
    for r in range(rounds):
        for key, call in calls.items():
            time.sleep(settle_ms / 1e3)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            call()
            seconds[key].append(time.perf_counter() - t0)
            faults[key] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        if on_round is not None:
            on_round(r + 1)
    return seconds, faults
