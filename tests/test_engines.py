"""Engines: the suffix table, the PyTorch and ONNX Runtime engines (real sessions, real crops),
manifest checks, input checks; TensorRT when it is installed."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenpose.data.heatmaps import HeatmapCodec
from tokenpose.data.transforms import box_to_center_scale, preprocess_crops, read_image
from tokenpose.engines.base import load_engine
from tokenpose.errors import CheckpointError, InputShapeError, TokenPoseError
from tokenpose.models.checkpoints import save_weights
from tokenpose.models.config import ModelConfig
from tokenpose.models.tokenpose import TokenPose

COCO_MINI = Path(__file__).parent / "fixtures" / "coco_mini"

# A 1-layer, 32-wide TokenPose-T at the real 256x192 input: seconds to export and run on CPU.
TINY = ModelConfig("tiny-t", "pixels", input_hw=(256, 192), heatmap_hw=(64, 48), patch_hw=(16, 12),
                   heads=2, depth=1, dim=32, mlp_hidden=64, head_hidden=32)


def peaked_model(config: ModelConfig = TINY, seed: int = 0) -> TokenPose:
    """Random weights, plus a head bias that is a Gaussian bump, so that every heatmap has one
    clear peak that the input moves by a fraction of a pixel (random heatmaps are flat, and their
    argmax is a tie that float rounding can flip; a trained model's maps are peaked like these).
    The head is shared by the joints, so all joints peak near the same point."""
    torch.manual_seed(seed)
    model = TokenPose(config).eval()
    h, w = config.heatmap_hw
    bump, _ = HeatmapCodec(config.input_hw, config.heatmap_hw, sigma=3.0).encode(
        np.array([[w * 0.4, h * 0.45]]), np.ones(1))
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(0.05)
        last.bias.copy_(torch.from_numpy(bump.reshape(-1)))
    return model


def build_artifacts(folder: Path, config: ModelConfig = TINY) -> dict[str, Path]:
    """`model.pth` (with variant metadata) and its FP32 ONNX export with manifest, in `folder`."""
    from tokenpose.export.pipeline import ExportOptions, export_model

    pth = folder / "model.pth"
    save_weights(peaked_model(config), pth, variant={"model_config": dataclasses.asdict(config)})
    summary = export_model(ExportOptions(variant=config, out_dir=folder, checkpoint=pth, engine=False,
                                         simplify=False, verify_batches=(1, 2)), log=lambda _m: None)
    return {"pth": pth, "onnx": summary.artifacts[0].path}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("engines"))


def real_crops(config: ModelConfig, n_images: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth person crops of the first coco_mini images: inputs (N, 3, H, W), centers, scales."""
    ann = json.loads((COCO_MINI / "annotations" / "person_keypoints_mini.json").read_text())
    names = {im["id"]: im["file_name"] for im in ann["images"]}
    by_image: dict[int, list] = {}
    for a in ann["annotations"]:
        if a["num_keypoints"] > 0 and not a["iscrowd"]:
            by_image.setdefault(a["image_id"], []).append(a["bbox"])
    inputs, centers, scales = [], [], []
    for image_id in sorted(by_image)[:n_images]:
        image = read_image(COCO_MINI / "images" / names[image_id])
        c, s = box_to_center_scale(np.asarray(by_image[image_id]), config.aspect_ratio)
        inputs.append(preprocess_crops(image, c, s, config.input_hw))
        centers.append(c)
        scales.append(s)
    return np.concatenate(inputs), np.concatenate(centers), np.concatenate(scales)


def test_load_engine_rejects_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(TokenPoseError, match="unknown engine file type '.tflite'"):
        load_engine(tmp_path / "model.tflite")
    with pytest.raises(TokenPoseError, match="not found"):
        load_engine(tmp_path / "missing.onnx")


def test_torch_engine_reads_variant_from_metadata(artifacts):
    engine = load_engine(artifacts["pth"])
    assert engine.name == "torch" and engine.precision == "fp32"
    assert engine.config == TINY
    assert engine.manifest["format"] == "pytorch" and len(engine.manifest["sha256"]) == 64
    out = engine(np.zeros((2, 3, 256, 192), dtype=np.float32))
    assert out.shape == (2, 17, 64, 48) and out.dtype == np.float32


def test_torch_engine_infers_variant_from_key_shapes(tmp_path):
    save_weights(TokenPose("t"), tmp_path / "plain.pth")  # no metadata: shapes decide
    assert load_engine(tmp_path / "plain.pth").config.name == "t"
    with pytest.raises(CheckpointError, match="does not fit TokenPose 's-v1'.*variant 't'"):
        load_engine(tmp_path / "plain.pth", variant="s-v1")


def test_torch_engine_checkpoint_without_variant_that_fits_none(tmp_path):
    save_weights(TokenPose(TINY), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="cannot tell which variant"):
        load_engine(tmp_path / "odd.pth")


def test_engines_check_input_before_the_backend(artifacts):
    for path in (artifacts["pth"], artifacts["onnx"]):
        engine = load_engine(path)
        with pytest.raises(InputShapeError, match=r"expected input \(B, 3, 256, 192\)"):
            engine(np.zeros((1, 3, 128, 96), dtype=np.float32))
        with pytest.raises(InputShapeError, match="float32"):
            engine(np.zeros((1, 3, 256, 192), dtype=np.uint8))
    small = load_engine(artifacts["pth"], max_batch=2)
    with pytest.raises(InputShapeError, match="batch 3 exceeds the engine's maximum batch 2"):
        small(np.zeros((3, 3, 256, 192), dtype=np.float32))


def test_onnx_engine_matches_torch_on_real_crops(artifacts):
    torch_engine = load_engine(artifacts["pth"])
    ort_engine = load_engine(artifacts["onnx"])
    assert ort_engine.name == "onnxruntime" and ort_engine.precision == "fp32"
    assert ort_engine.providers[0] == "CPUExecutionProvider" and ort_engine.max_batch is None
    assert ort_engine.manifest["variant"] == "tiny-t"
    inputs, centers, scales = real_crops(TINY)
    assert len(inputs) >= 4
    ref, got = torch_engine(inputs), ort_engine(inputs)
    assert np.abs(ref - got).max() < 1e-5
    codec = HeatmapCodec.from_config(TINY)
    k_ref, m_ref = codec.decode(ref, centers, scales)
    k_got, m_got = codec.decode(got, centers, scales)
    assert np.abs(k_ref - k_got).max() < 0.01  # image pixels
    assert np.abs(m_ref - m_got).max() < 1e-5


def test_torch_engine_bf16_autocast_is_close(artifacts):
    inputs, _, _ = real_crops(TINY, n_images=1)
    ref = load_engine(artifacts["pth"])(inputs)
    low = load_engine(artifacts["pth"], precision="bf16")(inputs)
    assert low.dtype == np.float32
    assert 0 < np.abs(ref - low).max() < 0.05


def test_onnx_engine_without_manifest(artifacts, tmp_path):
    lone = tmp_path / "lone.onnx"
    shutil.copy(artifacts["onnx"], lone)
    with pytest.raises(TokenPoseError, match="no manifest for .*lone.onnx"):
        load_engine(lone)


def test_onnx_engine_with_changed_file(artifacts, tmp_path):
    copy = tmp_path / artifacts["onnx"].name
    shutil.copy(artifacts["onnx"], copy)
    shutil.copy(str(artifacts["onnx"]) + ".json", str(copy) + ".json")
    with open(copy, "ab") as f:
        f.write(b"\0")
    with pytest.raises(TokenPoseError, match="does not match its manifest: sha256"):
        load_engine(copy)


def _with_edited_manifest(artifacts, tmp_path, **changes) -> Path:
    copy = tmp_path / artifacts["onnx"].name
    shutil.copy(artifacts["onnx"], copy)
    data = json.loads(Path(str(artifacts["onnx"]) + ".json").read_text())
    data.update(changes)
    Path(str(copy) + ".json").write_text(json.dumps(data))
    return copy


def test_onnx_engine_with_manifest_of_another_variant(artifacts, tmp_path):
    with pytest.raises(TokenPoseError, match="metadata_props say variant='tiny-t' but the manifest says 't'"):
        load_engine(_with_edited_manifest(artifacts, tmp_path, variant="t"))


def test_onnx_engine_with_manifest_of_other_sizes(artifacts, tmp_path):
    path = _with_edited_manifest(artifacts, tmp_path, heatmap_hw=[32, 24])
    with pytest.raises(TokenPoseError, match=r"output shape .* does not match .*mismatched manifest"):
        load_engine(path)


def test_onnx_engine_precision_is_fixed_and_device_must_exist(artifacts):
    with pytest.raises(TokenPoseError, match="is a fp32 model"):
        load_engine(artifacts["onnx"], precision="fp16")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(TokenPoseError, match="needs ONNX Runtime's CUDAExecutionProvider"):
            load_engine(artifacts["onnx"], device="cuda")


def test_torch_engine_rejects_options_of_other_backends(artifacts):
    with pytest.raises(TokenPoseError, match="do not apply to the torch engine"):
        load_engine(artifacts["pth"], threads=2)


@pytest.mark.tensorrt
def test_tensorrt_engine_needs_a_manifest(tmp_path):
    pytest.importorskip("tensorrt")
    (tmp_path / "x.engine").write_bytes(b"\0" * 16)
    with pytest.raises(TokenPoseError, match="no manifest"):
        load_engine(tmp_path / "x.engine")


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_engine_matches_onnx(artifacts, tmp_path):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from tokenpose.export.pipeline import ExportOptions, export_model

    pth = tmp_path / "model.pth"
    shutil.copy(artifacts["pth"], pth)
    summary = export_model(ExportOptions(variant=TINY, out_dir=tmp_path, checkpoint=pth, engine=True, simplify=False,
                                         verify_batches=(1, 2)), log=lambda _m: None)
    engine_path = next(a.path for a in summary.artifacts if a.format == "tensorrt")
    trt_engine = load_engine(engine_path)
    inputs, _, _ = real_crops(TINY)
    inputs = inputs[: trt_engine.max_batch]
    ref = load_engine(artifacts["onnx"])(inputs)
    got = trt_engine(inputs)
    assert np.abs(ref - got).max() < 1e-3
    too_many = np.zeros((trt_engine.max_batch + 1, 3, 256, 192), dtype=np.float32)
    with pytest.raises(InputShapeError, match="exceeds the engine's maximum batch"):
        trt_engine(too_many)
