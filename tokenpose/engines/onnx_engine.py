"""ONNX Runtime engine: an exported `.onnx` model (FP32, FP16 or INT8 Q/DQ) with its manifest.

Loading verifies the manifest beside the model (`tokenpose.manifest.verify_manifest`:
presence, sha256, metadata_props) and then checks the session's input/output names and shapes
against it, so a model and a manifest that do not belong together fail at load time, not as
wrong keypoints later.

Execution providers: "cpu", "cuda" (IO binding: the output stays on the GPU until one copy back)
or "tensorrt" (ORT's TensorRT EP with an engine cache and the manifest's batch profile);
"auto" takes CUDA when onnxruntime-gpu offers it, else the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tokenpose.engines.base import check_engine_input
from tokenpose.errors import TokenPoseError
from tokenpose.models.config import ModelConfig, get_config

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def config_from_manifest(manifest, artifact: Path) -> ModelConfig:
    """The variant's ModelConfig, checked against the sizes the manifest records."""
    from tokenpose.manifest import ManifestError

    try:
        cfg = get_config(manifest.variant)
    except ValueError:
        return runtime_config(manifest, artifact)
    want = {"input_hw": tuple(cfg.input_hw), "heatmap_hw": tuple(cfg.heatmap_hw), "num_joints": cfg.num_joints}
    for key, value in want.items():
        got = getattr(manifest, key)
        got = tuple(got) if isinstance(got, list | tuple) else got
        if got != value:
            raise ManifestError(
                f"{artifact}: manifest says {key}={got} but variant {cfg.name!r} has {value}: mismatched manifest"
            )
    return cfg


def runtime_config(manifest, artifact: Path) -> ModelConfig:
    """A ModelConfig for a variant outside the table (a reduced config exported in tests or
    research): only the fields an engine and the predictor use (sizes, joints, dataset, sigma)
    are real; the architecture fields are placeholders, since the artifact carries the network.
    """
    from tokenpose.manifest import ManifestError

    try:
        cfg = ModelConfig(
            name=str(manifest.variant), backbone="pixels", input_hw=tuple(manifest.input_hw),
            heatmap_hw=tuple(manifest.heatmap_hw), patch_hw=tuple(manifest.input_hw), heads=1, depth=1,
            dataset=manifest.dataset, sigma=float(manifest.sigma),
            description=f"runtime config read from the manifest of {artifact.name}",
        )
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{artifact}: manifest of unknown variant {manifest.variant!r} is unusable: {exc}") from None
    if cfg.num_joints != manifest.num_joints or tuple(map(tuple, cfg.flip_pairs)) != tuple(manifest.flip_pairs):
        raise ManifestError(
            f"{artifact}: manifest says {manifest.num_joints} joints / flip pairs {manifest.flip_pairs}, "
            f"which is not the {manifest.dataset!r} layout: mismatched manifest"
        )
    return cfg


class OnnxEngine:
    """An ONNX Runtime session behind the Engine protocol.

    `__call__`: (B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps (numpy, host).
    `max_batch` is the model's fixed batch when its batch axis is static, the manifest's profile
    maximum under the TensorRT EP, else None (any batch); `min_batch` is the fixed batch, the
    profile minimum under the TensorRT EP, else 1.
    """

    name = "onnxruntime"

    def __init__(self, session, manifest, path: Path, config: ModelConfig, device: str) -> None:
        self.session = session
        self.path = path
        self.config = config
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
        h, w = config.input_hw
        hm_h, hm_w = config.heatmap_hw
        self._check_dims(inp.shape, (3, h, w), "input")
        self._check_dims(out.shape, (config.num_joints, hm_h, hm_w), "output")
        static = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        self.static_batch = static
        self.min_batch = 1
        if static is not None:
            self.min_batch = self.max_batch = static
        elif "TensorrtExecutionProvider" in self.providers:
            self.max_batch = int(manifest.batch.get("max") or 0) or None
            self.min_batch = max(1, int(manifest.batch.get("min") or 1))  # the EP's profile minimum
        else:
            self.max_batch = None
        self._binding = session.io_binding() if self.providers[0] != "CPUExecutionProvider" else None

    def _io(self, values, name: str, kind: str):
        for v in values:
            if v.name == name:
                return v
        raise TokenPoseError(
            f"{self.path}: the model has no {kind} {name!r} named in its manifest (has {[v.name for v in values]}): "
            "mismatched manifest"
        )

    def _check_dims(self, shape, want: tuple[int, ...], kind: str) -> None:
        got = tuple(shape[1:])
        if len(got) != len(want) or any(isinstance(g, int) and g != w for g, w in zip(got, want)):
            raise TokenPoseError(
                f"{self.path}: model {kind} shape {list(shape)} does not match variant "
                f"{self.config.name!r} (expected [B, {', '.join(map(str, want))}]): mismatched manifest"
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
        **unused: Any,
    ) -> OnnxEngine:
        """Open `path` and its manifest `path.json`.

        device: "auto" (default), "cpu", "cuda" or "tensorrt". threads: intra-op CPU threads
        (0/None: ONNX Runtime's default, one per physical core). verify: check the sha256.
        """
        import onnxruntime as ort

        from tokenpose.engines.torch_engine import _reject_options
        from tokenpose.manifest import read_manifest, verify_manifest

        precision = unused.pop("precision", None)
        _reject_options(unused, "onnxruntime")
        path = Path(path)
        manifest = verify_manifest(path) if verify else read_manifest(path)
        if manifest.format != "onnx":
            raise TokenPoseError(f"{path}: its manifest describes a {manifest.format!r} artifact, not an ONNX model")
        check_precision(path, manifest, precision)
        config = config_from_manifest(manifest, path)
        device = _pick_device(device or "auto", ort.get_available_providers())

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of ops: parallelism is intra-op
        opts.intra_op_num_threads = int(threads or 0)
        opts.enable_mem_pattern = True
        opts.enable_cpu_mem_arena = True
        opts.log_severity_level = 3
        providers: list[Any] = list(PROVIDERS[device])
        if device == "tensorrt":
            h, w = config.input_hw
            lo, opt, hi = (int(manifest.batch.get(k) or 1) for k in ("min", "opt", "max"))
            shape = lambda b: f"{manifest.input_name}:{b}x3x{h}x{w}"
            cache = Path(trt_cache_dir) if trt_cache_dir else path.parent / ".trt_cache"
            providers[0] = ("TensorrtExecutionProvider", {
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                "trt_fp16_enable": manifest.precision == "fp16", "trt_int8_enable": manifest.precision == "int8",
                "trt_profile_min_shapes": shape(lo), "trt_profile_opt_shapes": shape(opt),
                "trt_profile_max_shapes": shape(hi),
            })
        try:
            session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TokenPoseError(f"{path}: ONNX Runtime cannot load the model: {reason}") from None
        return cls(session, manifest, path, config, device)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps."""
        x = check_engine_input(images, self.config, self.max_batch, self.name)
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            raise TokenPoseError(f"{self.path}: the model takes exactly batch {self.static_batch}, got {x.shape[0]}")
        if x.shape[0] < self.min_batch:
            raise TokenPoseError(f"{self.path}: batch {x.shape[0]} is below the TensorRT profile's minimum {self.min_batch}")
        if self.input_dtype is not np.float32:
            x = x.astype(self.input_dtype)
        if self._binding is None:
            out = self.session.run([self.output_name], {self.input_name: x})[0]
        else:
            # IO binding: the input is copied to the GPU once, the output stays there until one copy back.
            self._binding.clear_binding_inputs()
            self._binding.clear_binding_outputs()
            self._binding.bind_cpu_input(self.input_name, x)
            self._binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(self._binding)
            out = self._binding.copy_outputs_to_cpu()[0]
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxEngine({self.path.name}, {self.config.name}, {self.precision}, {self.providers[0]})"


def check_precision(path: Path, manifest, precision: str | None) -> None:
    """An exported artifact's precision is fixed: asking for another one is an error."""
    if precision is not None and precision != manifest.precision:
        raise TokenPoseError(
            f"{path} is a {manifest.precision} model; its precision cannot be changed to {precision} at load time "
            "(export a model in that precision)"
        )


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
