"""ONNX Runtime engine: an exported `.onnx` model (FP32, FP16 or INT8 Q/DQ) with its manifest.

Loading verifies the manifest beside the model (`tokenpose.manifest.verify_manifest`:
presence, sha256, metadata_props) and then checks the session's input/output names and shapes
against it, so a model and a manifest that do not belong together fail at load time, not as
wrong keypoints later.

Execution providers: "cpu", "cuda" (IO binding: the output stays on the GPU until one copy back)
or "tensorrt" (ORT's TensorRT EP with an engine cache and the manifest's batch profile);
"auto" takes CUDA when onnxruntime-gpu offers it, else the CPU.

On the CPU the model goes through the in-memory fusions its manifest lists (`onnxruntime.fusions`,
`tokenpose.export.fusion`: attention as MultiHeadAttention) and ONNX Runtime's graph optimisation
at the level the manifest records (default "all"); `fusions=()` / `graph_optimization=` override
them. Thread settings: `threads` (intra-op), `spinning` (whether idle pool threads spin-wait) and
`affinity` (ONNX Runtime's `session.intra_op_thread_affinities` string, e.g. "1;2" for 3 threads).
`micro_batch` (default "auto": `CPU_MICRO_BATCH` on the CPU) runs a larger batch in slices.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose.engines.base import (
    EngineMeta,
    check_engine_input,
    check_precision,
    in_slices,
    micro_batch_size,
    reject_options,
)
from tokenpose.errors import TokenPoseError
from tokenpose.export.fusion import FUSIONS, apply_fusions
from tokenpose.manifest import (
    Manifest,
    read_manifest,
    unreadable_artifact,
    verify_manifest,
)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
GRAPH_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
# On a CPU, ONNX Runtime's per-image time rises past a few images (S-v2, 2 cores: batch 32 at 0.94x
# batch 1's images/s, MatMuls +34% per image at batch 32 vs 1 in the profile: the (B, 785, 576) MLP
# activations leave the caches). A call larger than this runs in slices of this size.
CPU_MICRO_BATCH = 8


class OnnxEngine:
    """An ONNX Runtime session behind the Engine protocol.

    `__call__`: (B, 3, H, W) float32 crops normalised as `meta` says -> (B, J, h, w) float32
    heatmaps (numpy, host). `meta` is read from the manifest, its batch range from the session:
    `max_batch` is the model's fixed batch when its batch axis is static, the manifest's profile
    maximum under the TensorRT EP, else None (any batch); `min_batch` is the fixed batch, the
    profile minimum under the TensorRT EP, else 1.
    """

    name = "onnxruntime"

    def __init__(self, session, manifest: Manifest, path: Path, meta: EngineMeta, device: str) -> None:
        """`meta` is the manifest's; its batch range is replaced by what the session takes."""
        self.session = session
        self.path = path
        self.device = device
        self.manifest: dict[str, Any] = manifest.to_dict()
        self.precision = manifest.precision
        self.providers = session.get_providers()
        inp = self._io(session.get_inputs(), manifest.input_name, "input")
        out = self._io(session.get_outputs(), manifest.output_name, "output")
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype = _NP_TYPES.get(inp.type)
        if self.input_dtype is None:
            raise TokenPoseError(f"{path}: unsupported input type {inp.type} (expected float32 or float16)")
        self._check_dims(inp.shape, (3, *meta.input_hw), "input", meta)
        self._check_dims(out.shape, (meta.num_joints, *meta.heatmap_hw), "output", meta)
        static = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        self.static_batch = static
        if static is not None:
            lo, hi = static, static
        elif "TensorrtExecutionProvider" in self.providers:
            lo, hi = meta.min_batch, meta.max_batch  # the EP's profile, from the manifest
        else:
            lo, hi = 1, None
        self.meta = dataclasses.replace(meta, min_batch=lo, max_batch=hi)
        self.min_batch, self.max_batch = lo, hi
        self._binding = session.io_binding() if self.providers[0] != "CPUExecutionProvider" else None
        # What from_file created the session with (profiled_session makes a twin from these).
        self.session_settings: dict[str, Any] = {}
        self.micro_batch: int | None = None  # whole batches unless from_file(micro_batch=...) says otherwise
        self._model: Any = str(path)
        self._providers_requested: list[Any] = list(self.providers)

    @property
    def config(self) -> EngineMeta:
        """`meta`, under the name callers written against a ModelConfig use (sizes, joints, dataset)."""
        return self.meta

    def _io(self, values, name: str, kind: str):
        for v in values:
            if v.name == name:
                return v
        raise TokenPoseError(
            f"{self.path}: the model has no {kind} {name!r} named in its manifest (has {[v.name for v in values]}): "
            "mismatched manifest"
        )

    def _check_dims(self, shape, want: tuple[int, ...], kind: str, meta: EngineMeta) -> None:
        got = tuple(shape[1:])
        if len(got) != len(want) or any(isinstance(g, int) and g != w for g, w in zip(got, want)):
            raise TokenPoseError(
                f"{self.path}: model {kind} shape {list(shape)} does not match variant "
                f"{meta.variant!r} (expected [B, {', '.join(map(str, want))}]): mismatched manifest"
            )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        device: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        trt_cache_dir: str | os.PathLike | None = None,
        graph_optimization: str | None = None,
        fusions: tuple[str, ...] | list[str] | None = None,
        spinning: bool | None = None,
        affinity: str | None = None,
        micro_batch: int | str | None = "auto",
        **unused: Any,
    ) -> OnnxEngine:
        """Open `path` and its manifest `path.json`.

        device: "auto" (default), "cpu", "cuda" or "tensorrt". threads: intra-op CPU threads
        (0/None: ONNX Runtime's default, one per physical core). verify: check the sha256.
        graph_optimization: one of GRAPH_OPTIMIZATION_LEVELS (default: the manifest's, else "all");
        fusions: CPU graph rewrites (default: the manifest's list, else all of `FUSIONS`);
        spinning / affinity: the intra-op pool's spin-wait and thread affinities (default: ORT's).
        micro_batch: slice size for larger calls ("auto": `CPU_MICRO_BATCH` on the CPU when the batch
        axis is dynamic, else whole batches; None or 0: whole).
        """
        import onnxruntime as ort

        precision = unused.pop("precision", None)
        reject_options(unused, "onnxruntime")
        path = Path(path)
        manifest = verify_manifest(path) if verify else read_manifest(path)
        if manifest.format != "onnx":
            raise TokenPoseError(f"{path}: its manifest describes a {manifest.format!r} artifact, not an ONNX model")
        check_precision(path, manifest, precision)
        meta = EngineMeta.from_manifest(manifest, path)
        device = _pick_device(device or "auto", ort.get_available_providers())
        recorded = manifest.onnxruntime or {}
        level = graph_optimization or recorded.get("graph_optimization_level", "all")
        if level not in GRAPH_OPTIMIZATION_LEVELS:
            raise TokenPoseError(f"graph_optimization must be one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}, got {level!r}")
        settings = {"graph_optimization_level": level, "threads": int(threads or 0), "spinning": spinning,
                    "affinity": affinity,
                    "fusions": list(recorded.get("fusions", FUSIONS) if fusions is None else fusions)
                    if device == "cpu" else []}
        providers: list[Any] = list(PROVIDERS[device])
        if device == "tensorrt":
            providers[0] = _tensorrt_provider(manifest, meta, path, trt_cache_dir)
        model: Any = str(path)
        if settings["fusions"]:
            model, settings["fused"] = _fused_model(path, settings["fusions"])
        session = _session(ort, model, settings, providers, path)
        engine = cls(session, manifest, path, meta, device)
        engine.session_settings = settings
        engine.micro_batch = micro_batch_size(
            micro_batch, CPU_MICRO_BATCH if device == "cpu" and engine.static_batch is None else None)
        engine._model = model
        engine._providers_requested = providers
        return engine

    def profiled_session(self, prefix: str):
        """A second session of the same model and settings with ONNX Runtime's profiler on
        (`prefix` for its JSON trace); `end_profiling()` on it returns the trace's path."""
        import onnxruntime as ort

        return _session(ort, self._model, {**self.session_settings, "profile_prefix": prefix},
                        self._providers_requested, self.path)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 crops normalised as `meta` says -> (B, J, h, w) float32 heatmaps."""
        x = check_engine_input(images, self.meta, self.name)
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            raise TokenPoseError(f"{self.path}: the model takes exactly batch {self.static_batch}, got {x.shape[0]}")
        if x.shape[0] < self.min_batch:
            raise TokenPoseError(f"{self.path}: batch {x.shape[0]} is below the TensorRT profile's minimum {self.min_batch}")
        if self.input_dtype is not np.float32:
            x = x.astype(self.input_dtype)
        outs = in_slices(self._run, x, self.micro_batch)
        return np.asarray(outs[0] if len(outs) == 1 else np.concatenate(outs), dtype=np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._binding is None:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        # IO binding: the input is copied to the GPU once, the output stays there until one copy back.
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._binding.bind_cpu_input(self.input_name, x)
        self._binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(self._binding)
        return self._binding.copy_outputs_to_cpu()[0]

    def __repr__(self) -> str:
        return f"OnnxEngine({self.path.name}, {self.meta.variant}, {self.precision}, {self.providers[0]})"


def _tensorrt_provider(manifest: Manifest, meta: EngineMeta, path: Path, trt_cache_dir) -> tuple[str, dict]:
    """ORT's TensorRT EP with an engine cache and the manifest's batch profile."""
    h, w = meta.input_hw
    lo, opt, hi = (int(manifest.batch.get(k) or 1) for k in ("min", "opt", "max"))
    shape = lambda b: f"{manifest.input_name}:{b}x3x{h}x{w}"
    cache = Path(trt_cache_dir) if trt_cache_dir else path.parent / ".trt_cache"
    return ("TensorrtExecutionProvider", {
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
        "trt_fp16_enable": manifest.precision == "fp16", "trt_int8_enable": manifest.precision == "int8",
        "trt_profile_min_shapes": shape(lo), "trt_profile_opt_shapes": shape(opt),
        "trt_profile_max_shapes": shape(hi),
    })


def _fused_model(path: Path, fusions: list[str]) -> tuple[bytes, dict[str, int]]:
    """The model at `path` with the CPU fusions applied, serialized: (bytes, {fusion: count})."""
    import onnx

    try:
        proto = onnx.load(str(path))
        proto, counts = apply_fusions(proto, fusions)
    except ValueError as exc:
        raise TokenPoseError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: not a readable model
        raise unreadable_artifact(path, "ONNX model", exc) from None
    return proto.SerializeToString(), counts


def _session(ort, model, settings: dict, providers: list, path: Path):
    """An InferenceSession of `model` (a path string or bytes) with the engine's settings."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings["graph_optimization_level"]]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of ops: parallelism is intra-op
    opts.intra_op_num_threads = settings["threads"]
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = True
    opts.log_severity_level = 3
    if settings.get("spinning") is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings["spinning"] else "0")
    if settings.get("affinity"):
        opts.add_session_config_entry("session.intra_op_thread_affinities", str(settings["affinity"]))
    if settings.get("profile_prefix"):
        opts.enable_profiling = True
        opts.profile_file_prefix = settings["profile_prefix"]
    try:
        return ort.InferenceSession(model, opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        raise unreadable_artifact(path, "ONNX model", exc) from None


def _pick_device(device: str, available: list[str]) -> str:
    if device == "auto":
        return "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device not in PROVIDERS:
        raise TokenPoseError(f"device must be auto, {', '.join(PROVIDERS)}; got {device!r}")
    needed = PROVIDERS[device][0]
    if needed not in available:
        raise TokenPoseError(
            f"device {device!r} needs ONNX Runtime's {needed}, which this onnxruntime does not offer "
            f"(available: {', '.join(available)}); install onnxruntime-gpu"
        )
    return device
