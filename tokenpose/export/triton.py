"""An NVIDIA Triton model repository for exported artifacts (`tokenpose-export ... --triton`).

For each ONNX model or TensorRT engine: `OUT/triton/tokenpose_<variant>_<precision>[_trt]/` with
`config.pbtxt` (inputs/outputs, `max_batch_size` and `dynamic_batching` from the artifact's batch
range, one `instance_group`), `1/model.onnx` or `1/model.plan`, and the artifact's manifest beside
the config. The text follows Triton's `model_config.proto`; tests parse it with that schema
(`tritonclient`'s `model_config_pb2`), which the export itself does not need.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from tokenpose.errors import TokenPoseError
from tokenpose.files import atomic_write
from tokenpose.manifest import Manifest, manifest_path

__all__ = ["TRITON_DTYPES", "triton_config", "triton_model_name", "write_triton_model"]

# ONNX TensorProto element type -> Triton data type (the ones a TokenPose model can have at its edges).
TRITON_DTYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 3: "TYPE_INT8", 2: "TYPE_UINT8"}
# How long Triton may hold a request to fill a preferred batch.
QUEUE_DELAY_US = 1000


def triton_model_name(manifest: Manifest) -> str:
    """The artifact's file stem (`tokenpose_<variant>_<precision>`, `..._int8-fp16` for the GPU INT8
    model), with `_trt` for a TensorRT engine, which shares its ONNX model's stem."""
    suffix = "_trt" if manifest.format == "tensorrt" else ""
    return f"{Path(manifest.artifact).stem}{suffix}"


def _onnx_edge_types(path: Path) -> tuple[str, str]:
    """Triton data types of the ONNX model's first input and first output."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: one line
        raise TokenPoseError(f"cannot read ONNX model {path}: {type(exc).__name__}: {exc}") from None
    kinds = [graph.input[0].type.tensor_type.elem_type, graph.output[0].type.tensor_type.elem_type]
    unknown = [k for k in kinds if k not in TRITON_DTYPES]
    if unknown:
        raise TokenPoseError(f"{path}: ONNX element type {unknown[0]} has no Triton data type here")
    return TRITON_DTYPES[kinds[0]], TRITON_DTYPES[kinds[1]]


def _tensor(name: str, dtype: str, dims: Sequence[int]) -> str:
    return (f'  {{\n    name: "{name}"\n    data_type: {dtype}\n'
            f"    dims: [ {', '.join(str(int(d)) for d in dims)} ]\n  }}")


def triton_config(manifest: Manifest, input_dtype: str, output_dtype: str, preferred: Sequence[int],
                  instances: int = 1, kind: str = "KIND_GPU") -> str:
    """`config.pbtxt` text for one artifact; the batch axis is Triton's (`max_batch_size`), not in dims."""
    top = int(manifest.batch["max"])
    sizes = sorted({int(b) for b in preferred if 1 <= int(b) <= top})
    if not sizes:
        raise TokenPoseError(f"no preferred batch size within the artifact's batch range 1..{top}: {list(preferred)}")
    if kind not in ("KIND_GPU", "KIND_CPU", "KIND_AUTO"):
        raise TokenPoseError(f"instance kind must be KIND_GPU, KIND_CPU or KIND_AUTO, got {kind!r}")
    backend = 'platform: "tensorrt_plan"' if manifest.format == "tensorrt" else 'backend: "onnxruntime"'
    h, w = manifest.input_hw
    hh, hw = manifest.heatmap_hw
    return "\n".join([
        f'name: "{triton_model_name(manifest)}"',
        backend,
        f"max_batch_size: {top}",
        "input [\n" + _tensor(manifest.input_name, input_dtype, (3, h, w)) + "\n]",
        "output [\n" + _tensor(manifest.output_name, output_dtype, (manifest.num_joints, hh, hw)) + "\n]",
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, sizes))} ]\n"
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}",
        f"instance_group [\n  {{\n    count: {int(instances)}\n    kind: {kind}\n  }}\n]",
        "",
    ])


def write_triton_model(artifact: Path, manifest: Manifest, repository: Path, preferred: Sequence[int],
                       instances: int = 1, kind: str = "KIND_GPU") -> Path:
    """Write one model of the repository; returns its folder. The artifact is copied (atomically) to
    `1/model.onnx` or `1/model.plan`, its manifest to `manifest.json` beside `config.pbtxt`."""
    if manifest.format == "onnx":
        in_type, out_type, file_name = *_onnx_edge_types(artifact), "model.onnx"
    elif manifest.format == "tensorrt":
        # Our engines keep float32 images and heatmaps at their edges in every precision.
        in_type, out_type, file_name = "TYPE_FP32", "TYPE_FP32", "model.plan"
    else:
        raise TokenPoseError(f"{artifact}: Triton serves ONNX models and TensorRT engines, not {manifest.format!r}")
    text = triton_config(manifest, in_type, out_type, preferred, instances, kind)
    folder = repository / triton_model_name(manifest)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "1" / file_name, "wb") as f, open(artifact, "rb") as src:
        shutil.copyfileobj(src, f)
    with atomic_write(folder / "manifest.json", "w") as f:
        f.write(manifest_path(artifact).read_text())
    with atomic_write(folder / "config.pbtxt", "w") as f:
        f.write(text)
    return folder
