"""What a benchmark run measures: the `--engines` names, the settings dataclass and its checks.

`BenchSettings.check(...)` is the one place a bad option is caught: it raises `BenchError` naming
the option and the value, before anything is exported or timed. This module needs nothing but the
standard library (the run passes in the variant names, file types and CUDA state it checks
against), so the CLI can build its help from `ENGINES` without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenpose.errors import TokenPoseError
from tokenpose.files import user_cache_dir

__all__ = [
    "BASELINE_ENGINE",
    "DEFAULT_ENGINES",
    "DEFAULT_WORK_DIR",
    "ENGINES",
    "BenchError",
    "BenchSettings",
    "EngineSpec",
    "parse_batches",
    "parse_names",
]

DEFAULT_WORK_DIR = user_cache_dir() / "bench"


class BenchError(TokenPoseError):
    """Bad benchmark settings, or a run that produced nothing to report."""


@dataclass(frozen=True)
class EngineSpec:
    """One `--engines` name: which backend, in which precision, from which artifact."""

    name: str
    backend: str  # "torch", "onnxruntime", "tensorrt", "aoti"
    precision: str  # "fp32", "fp16", "bf16", "int8"
    suffix: str  # the artifact's suffix: ".pth", ".onnx", ".engine", ".pt2"
    compile: bool = False  # torch only: `torch.compile` (the first call at each batch size compiles)


ENGINES: dict[str, EngineSpec] = {
    s.name: s
    for s in (
        EngineSpec("torch", "torch", "fp32", ".pth"),
        EngineSpec("torch-compile", "torch", "fp32", ".pth", compile=True),
        EngineSpec("torch-bf16", "torch", "bf16", ".pth"),
        EngineSpec("torch-fp16", "torch", "fp16", ".pth"),
        EngineSpec("onnx", "onnxruntime", "fp32", ".onnx"),
        EngineSpec("onnx-fp16", "onnxruntime", "fp16", ".onnx"),
        EngineSpec("onnx-int8", "onnxruntime", "int8", ".onnx"),
        EngineSpec("aoti", "aoti", "fp32", ".pt2"),
        EngineSpec("trt-fp32", "tensorrt", "fp32", ".engine"),
        EngineSpec("trt-fp16", "tensorrt", "fp16", ".engine"),
        EngineSpec("trt-int8", "tensorrt", "int8", ".engine"),
    )
}
DEFAULT_ENGINES = ("torch", "onnx", "onnx-fp16", "onnx-int8", "trt-fp16", "trt-int8")
BASELINE_ENGINE = "torch"  # PyTorch eager FP32: what speedups are relative to


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
    """What to measure. Validated by `check()`; the JSON `settings` object holds these fields.

    Inputs are arguments, never files of this repository: without `calib_data` the INT8 engines
    are skipped with that reason; without `pipeline_data` the pipeline runs on seeded synthetic
    scenes (`tokenpose.bench.pipeline.synthetic_scenes`).
    """

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
    settle_ms: float = 50.0  # idle pause before each timed call (see tokenpose.bench.timing)
    pipeline: bool = False
    persons: int = 8
    pipeline_images: int = 4
    work_dir: str = str(DEFAULT_WORK_DIR)
    checkpoint: str | None = None
    calib_data: str | None = None  # COCO keypoints json or image folder for INT8 calibration
    calib_size: int = 32
    pipeline_data: str | None = None  # COCO keypoints json with person boxes; None: synthetic scenes
    peak_size: int = 0  # n of the peak GEMM; 0: 2048 on CPU, 8192 on CUDA
    seed: int = 0
    profile: bool = False  # per-op table of ONNX Runtime engines at the largest batch
    emulated: bool = False  # also time precisions this device only emulates (marked "emulated")

    def check(self, variants: Sequence[str], file_types: Sequence[str], cuda: bool) -> BenchSettings:
        """Raise BenchError naming the first bad value; resolve names and the device.

        `variants`: the valid variant names; `file_types`: the suffixes `--engine` files may have;
        `cuda`: whether a CUDA device is visible (what `--device auto` resolves to).
        """
        self.variants = parse_names(self.variants, "variant", variants)
        if not self.variants:
            raise BenchError("no variant given")
        self.engines = parse_names(self.engines, "engine", list(ENGINES))
        self.batches = parse_batches(self.batches)
        self._check_files(file_types)
        for name, value, low in (("--iters", self.iters, 1), ("--warmup", self.warmup, 0),
                                 ("--threads", self.threads, 0), ("--persons", self.persons, 1),
                                 ("--pipeline-images", self.pipeline_images, 1), ("--calib-size", self.calib_size, 1),
                                 ("--peak-size", self.peak_size, 0), ("--settle-ms", self.settle_ms, 0)):
            if int(value) < low:
                raise BenchError(f"{name} must be >= {low}, got {value}")
        if self.seconds is not None and not self.seconds > 0:
            raise BenchError(f"--seconds must be > 0, got {self.seconds}")
        self._check_device(cuda)
        if self.checkpoint is not None and len(self.variants) > 1:
            raise BenchError("--checkpoint holds one variant's weights: give exactly one --variant with it")
        return self

    def _check_files(self, file_types: Sequence[str]) -> None:
        for f in self.engine_files:
            if Path(f).suffix.lower() not in file_types:
                raise BenchError(f"--engine {f}: unknown engine file type; expected one of {', '.join(file_types)}")
            if not Path(f).is_file():
                raise BenchError(f"--engine {f}: file not found")
        if not self.engines and not self.engine_files:
            raise BenchError("nothing to benchmark: give --engines names or --engine files")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise BenchError(f"--checkpoint {self.checkpoint}: file not found")
        if self.calib_data is not None and not Path(self.calib_data).exists():
            raise BenchError(f"--calib-data {self.calib_data}: not found")
        if self.pipeline and self.pipeline_data is not None and not Path(self.pipeline_data).is_file():
            raise BenchError(f"--pipeline-data {self.pipeline_data}: file not found "
                             "(a COCO keypoints json with person boxes)")

    def _check_device(self, cuda: bool) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise BenchError(f"--device must be auto, cpu or cuda; got {self.device!r}")
        if self.device == "auto":
            self.device = "cuda" if cuda else "cpu"
        elif self.device == "cuda" and not cuda:
            raise BenchError("--device cuda: PyTorch sees no CUDA device here")
        if self.cuda_graphs and self.device != "cuda":
            raise BenchError("--cuda-graphs needs --device cuda")
