"""The metadata that travels with every exported artifact (DESIGN convention 7).

Each artifact `X` (an ONNX model, a TensorRT engine) gets `X.json` beside it: what the model
expects (variant, input and heatmap size, mean/std, colour order, flip pairs), how it was made
(precision, batch range, calibration, checkpoint), the library versions, the GPU (engines) and the
sha256 of `X`. ONNX models also carry the same fields, JSON-encoded, in `metadata_props`
(`tokenpose.<field>`), all but the sha256, which cannot be part of the bytes it hashes.

`verify_manifest(path)` is what loaders call: it raises `ManifestError` with the first mismatch
(missing manifest, hash, TensorRT version, GPU name) in one line.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenpose.keypoints import MEAN_RGB, STD_RGB
from tokenpose import cuda
from tokenpose.errors import TokenPoseError
from tokenpose.files import atomic_write
from tokenpose.models.config import ModelConfig, get_config

__all__ = [
    "METADATA_PREFIX",
    "BatchRange",
    "Manifest",
    "ManifestError",
    "library_versions",
    "manifest_path",
    "read_manifest",
    "sha256_file",
    "unreadable_artifact",
    "verify_manifest",
    "write_manifest",
]

METADATA_PREFIX = "tokenpose."
MANIFEST_SCHEMA = 1


class ManifestError(TokenPoseError):
    """An artifact's manifest is missing, unreadable, or does not match the artifact or this machine."""


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes an artifact is built for: TensorRT's one optimisation profile (min, opt, max)."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(
                f"batch range must satisfy 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}"
            )

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """'min:opt:max' ('1:8:32'); 'N' means 1:N:N and 'a:b' means a:b:b."""
        parts = str(text).strip().split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"batch range must be 'min:opt:max' integers like 1:8:32, got {text!r}") from None
        if len(values) == 1:
            values = [1, values[0], values[0]]
        elif len(values) == 2:
            values = [values[0], values[1], values[1]]
        elif len(values) != 3:
            raise ValueError(f"batch range must be 'min:opt:max' like 1:8:32, got {text!r}")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass
class Manifest:
    """Everything a loader needs to know about one artifact. Sizes are (H, W) in pixels."""

    variant: str
    artifact: str  # file name of the artifact, relative to the manifest
    format: str  # "onnx", "tensorrt" or "pt2"
    precision: str  # "fp32", "fp16" or "int8"
    input_name: str
    output_name: str
    input_hw: tuple[int, int]
    heatmap_hw: tuple[int, int]
    num_joints: int
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigma: float
    dataset: str
    batch: dict[str, int]
    opset: int | None = None
    mean_rgb: tuple[float, float, float] = MEAN_RGB
    std_rgb: tuple[float, float, float] = STD_RGB
    color_order: str = "RGB"
    input_layout: str = "NCHW float32, pixels / 255 then (x - mean) / std"
    checkpoint: str | None = None  # file name, None for randomly initialised weights
    checkpoint_sha256: str | None = None
    random_weights: bool = False
    calibration: dict | None = None
    higher_precision: dict | None = None  # what stays in FP32 in an FP16/INT8 model, and why
    # INT8 only: what the unquantized ops compute in. "fp32": the CPU INT8 model; "fp16": the GPU
    # one (Q/DQ on the FP16 model, LayerNorm/Softmax in FP32). None for other precisions.
    int8_base: str | None = None
    verification: dict | None = None  # parity / accuracy figures measured at export
    source: str | None = None  # the artifact this one was made from (an engine's ONNX file)
    # ONNX only: how an ONNX Runtime CPU session runs it (graph optimisation level, the in-memory
    # fusions of tokenpose.export.fusion it was verified with, the INT8 kernels it gets).
    onnxruntime: dict | None = None
    # AOTInductor only: file name (beside the package) of the operator library it calls
    # (tokenpose::attention, tokenpose.models.fused_attention); loaders load it first. None: none needed.
    op_library: str | None = None
    sha256: str = ""
    versions: dict[str, str | None] = field(default_factory=dict)
    gpu: str | None = None
    created: str = ""
    schema: int = MANIFEST_SCHEMA

    @classmethod
    def for_config(cls, config: ModelConfig | str, **fields: Any) -> Manifest:
        """A manifest with the model fields filled from the variant's config."""
        cfg = get_config(config)
        base: dict[str, Any] = {
            "variant": cfg.name, "input_hw": tuple(cfg.input_hw), "heatmap_hw": tuple(cfg.heatmap_hw),
            "num_joints": cfg.num_joints, "keypoint_names": tuple(cfg.keypoint_names),
            "flip_pairs": tuple(tuple(p) for p in cfg.flip_pairs), "sigma": float(cfg.sigma),
            "dataset": cfg.dataset, "input_name": "images", "output_name": "heatmaps",
            "versions": library_versions(), "created": _now(),
        }
        base.update(fields)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ManifestError(f"manifest lacks the fields: {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("input_hw", "heatmap_hw", "mean_rgb", "std_rgb", "keypoint_names"):
            if key in kwargs and kwargs[key] is not None:
                kwargs[key] = tuple(kwargs[key])
        if "flip_pairs" in kwargs:
            kwargs["flip_pairs"] = tuple(tuple(p) for p in kwargs["flip_pairs"])
        return cls(**kwargs)

    def metadata_props(self) -> dict[str, str]:
        """The ONNX `metadata_props` entries: every field but sha256, JSON-encoded."""
        return {
            METADATA_PREFIX + k: v if isinstance(v, str) else json.dumps(v)
            for k, v in self.to_dict().items() if k != "sha256"
        }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _package_version() -> str:
    """tokenpose's installed version, read from the package metadata (not by importing the package)."""
    from importlib import metadata

    try:
        return metadata.version("tokenpose")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape an artifact; None for one that is not installed."""
    from importlib import metadata

    out: dict[str, str | None] = {"tokenpose": _package_version()}
    # opencv: the crop's pixel arithmetic differs between OpenCV 4 and 5; the C++ example reads it.
    for name, dist in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                       ("onnxslim", "onnxslim"), ("onnxconverter_common", "onnxconverter-common"),
                       ("opencv", "opencv-python-headless")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["tensorrt"] = tensorrt_version()
    return out


def tensorrt_version() -> str | None:
    """The importable TensorRT's version, or None. Imports tensorrt only when asked."""
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 - ImportError, or a broken install (missing CUDA libraries raise OSError)
        return None
    return str(tensorrt.__version__)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_path(artifact: str | os.PathLike) -> Path:
    """`model.onnx` -> `model.onnx.json`: the manifest sits beside the artifact."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def write_manifest(manifest: Manifest, artifact: str | os.PathLike) -> Path:
    """Hash `artifact`, fill sha256/artifact name, and write `<artifact>.json` atomically."""
    artifact = Path(artifact)
    manifest.sha256 = sha256_file(artifact)
    manifest.artifact = artifact.name
    path = manifest_path(artifact)
    with atomic_write(path, "w") as f:
        json.dump(manifest.to_dict(), f, indent=2)
        f.write("\n")
    return path


def read_manifest(artifact: str | os.PathLike) -> Manifest:
    """The manifest beside `artifact`; ManifestError when it is missing or unreadable."""
    path = manifest_path(artifact)
    if not path.is_file():
        raise ManifestError(f"no manifest for {artifact}: expected {path} beside it (re-export the model)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {path} is not a JSON object")
    return Manifest.from_dict(data)


def unreadable_artifact(path: str | os.PathLike, kind: str, exc: BaseException) -> TokenPoseError:
    """The one-line error for an artifact its library cannot parse (a truncated or foreign file):
    "cannot read <kind> <path>: <the library's first line>". Loaders raise it `from None`."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return TokenPoseError(f"cannot read {kind} {path}: {reason}")


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or OSError: both mean "not this model"
        raise unreadable_artifact(path, "ONNX model", exc) from None
    return {p.key: p.value for p in model.metadata_props}


def verify_manifest(
    artifact: str | os.PathLike,
    *,
    tensorrt_version_now: str | None = None,
    gpu_now: str | None = None,
    check_runtime: bool = True,
) -> Manifest:
    """Check that `artifact` is the file its manifest describes; return the manifest.

    Raises ManifestError when the artifact or its manifest is missing, the sha256 differs, an
    ONNX model's `metadata_props` lack or disagree with the manifest's variant/precision, or
    (engines, `check_runtime`) the TensorRT version or GPU differs from this machine's, the
    manifest records no GPU, or this machine's GPU name cannot be read. `tensorrt_version_now` / `gpu_now`
    override what is detected here (engines pass what their runtime reports).
    """
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ManifestError(f"artifact not found: {artifact}")
    manifest = read_manifest(artifact)
    if manifest.artifact != artifact.name:
        raise ManifestError(
            f"manifest {manifest_path(artifact)} describes {manifest.artifact!r}, not {artifact.name!r}"
        )
    digest = sha256_file(artifact)
    if digest != manifest.sha256:
        raise ManifestError(
            f"{artifact} does not match its manifest: sha256 {digest[:12]}... != {manifest.sha256[:12]}... "
            "(the file was changed or replaced after export)"
        )
    if manifest.format == "onnx":
        # Every ONNX model tokenpose writes carries its manifest in metadata_props: a model without
        # them is not the one this manifest was written for (or was re-saved by another tool).
        meta = _onnx_metadata(artifact)
        for key in ("variant", "precision"):
            value = meta.get(METADATA_PREFIX + key)
            if value is None:
                raise ManifestError(
                    f"{artifact}: the model has no {METADATA_PREFIX}{key} in its metadata_props, but its manifest "
                    f"says {key}={getattr(manifest, key)!r}: mismatched manifest (re-export the model)"
                )
            if value != getattr(manifest, key):
                raise ManifestError(
                    f"{artifact}: metadata_props say {key}={value!r} but the manifest says {getattr(manifest, key)!r}"
                )
    if manifest.format == "tensorrt" and check_runtime:
        built = manifest.versions.get("tensorrt")
        now = tensorrt_version_now if tensorrt_version_now is not None else tensorrt_version()
        if now is None:
            raise ManifestError(f"{artifact} is a TensorRT {built} engine but tensorrt is not installed here")
        if built != now:
            raise ManifestError(
                f"{artifact} was built with TensorRT {built} but this machine has TensorRT {now}: rebuild the engine"
            )
        # A TensorRT engine runs only on the GPU model it was built for: the check is never skipped.
        if not manifest.gpu:
            raise ManifestError(
                f"{artifact}: its manifest records no GPU name, so it cannot be checked against this machine's "
                "GPU: rebuild the engine (the build records the GPU through PyTorch CUDA or cuda-python)"
            )
        if gpu_now is None:
            gpu_now = cuda.gpu_name()
        if not gpu_now:
            raise ManifestError(
                f"{artifact} was built for GPU {manifest.gpu!r}, but this machine's GPU name cannot be read "
                "(no CUDA device or driver, and neither a CUDA build of PyTorch nor cuda-python>=12.6)"
            )
        if manifest.gpu != gpu_now:
            raise ManifestError(
                f"{artifact} was built for GPU {manifest.gpu!r} but this machine has {gpu_now!r}: rebuild the engine"
            )
    return manifest
