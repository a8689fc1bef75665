"""Engines: the suffix table, the PyTorch and ONNX Runtime engines (real sessions, real crops),
manifest checks, input checks; TensorRT when it is installed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
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


def test_onnx_engine_runs_the_fused_attention_graph_within_parity(tmp_path):
    """A simplified export (as tokenpose-export makes by default) runs its attention as one fused
    MultiHeadAttention node on the CPU; it matches PyTorch as the plain graph does."""
    from tokenpose.export.pipeline import ExportOptions, export_model

    pth = tmp_path / "model.pth"
    save_weights(peaked_model(TINY), pth, variant={"model_config": dataclasses.asdict(TINY)})
    onnx_path = export_model(ExportOptions(variant=TINY, out_dir=tmp_path, checkpoint=pth, engine=False,
                                           verify_batches=(1, 2)), log=lambda _m: None).artifacts[0].path
    fused = load_engine(onnx_path, threads=1, spinning=False)
    plain = load_engine(onnx_path, threads=1, fusions=(), graph_optimization="basic")
    assert fused.manifest["onnxruntime"]["fusions"] == ["attention", "split_matmul", "quantized_relu"]
    assert fused.session_settings["fused"] == {"attention": 1, "split_matmul": 1, "quantized_relu": 0}
    assert plain.session_settings["fusions"] == []
    inputs, _, _ = real_crops(TINY)
    ref = load_engine(pth)(inputs)
    assert np.abs(fused(inputs) - ref).max() < 1e-4 and np.abs(plain(inputs) - ref).max() < 1e-4
    with pytest.raises(TokenPoseError, match="graph_optimization must be one of"):
        load_engine(onnx_path, graph_optimization="max")
    with pytest.raises(TokenPoseError, match="unknown graph fusion"):
        load_engine(onnx_path, fusions=("gelu",))


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


def with_edited_manifest(artifacts, tmp_path, **changes) -> Path:
    copy = tmp_path / artifacts["onnx"].name
    shutil.copy(artifacts["onnx"], copy)
    data = json.loads(Path(str(artifacts["onnx"]) + ".json").read_text())
    data.update(changes)
    Path(str(copy) + ".json").write_text(json.dumps(data))
    return copy


def test_onnx_engine_with_manifest_of_another_variant(artifacts, tmp_path):
    with pytest.raises(TokenPoseError, match="metadata_props say variant='tiny-t' but the manifest says 't'"):
        load_engine(with_edited_manifest(artifacts, tmp_path, variant="t"))


def test_onnx_engine_with_manifest_of_other_sizes(artifacts, tmp_path):
    path = with_edited_manifest(artifacts, tmp_path, heatmap_hw=[32, 24])
    with pytest.raises(TokenPoseError, match=r"output shape .* does not match .*mismatched manifest"):
        load_engine(path)


def test_every_engine_carries_typed_meta_from_its_manifest_or_config(artifacts):
    from tokenpose.engines.base import Engine, EngineMeta
    from tokenpose.keypoints import COCO_FLIP_PAIRS, COCO_KEYPOINTS, MEAN_RGB, STD_RGB
    from tokenpose.manifest import read_manifest

    torch_engine, onnx_engine = load_engine(artifacts["pth"], max_batch=3), load_engine(artifacts["onnx"])
    for engine in (torch_engine, onnx_engine):
        meta = engine.meta
        assert isinstance(engine, Engine) and isinstance(meta, EngineMeta)
        assert (meta.variant, meta.dataset, meta.input_hw, meta.heatmap_hw) == ("tiny-t", "coco", (256, 192), (64, 48))
        assert (meta.num_joints, meta.keypoint_names, meta.flip_pairs) == (17, COCO_KEYPOINTS, COCO_FLIP_PAIRS)
        assert (meta.mean_rgb, meta.std_rgb, meta.color_order, meta.sigma) == (MEAN_RGB, STD_RGB, "RGB", 2.0)
        assert (meta.precision, meta.min_batch, meta.aspect_ratio) == ("fp32", 1, 0.75)
        assert (engine.min_batch, engine.max_batch) == (meta.min_batch, meta.max_batch)
        assert HeatmapCodec.from_config(meta).heatmap_hw == (64, 48)
    assert torch_engine.meta.max_batch == 3 and torch_engine.config == TINY  # the real ModelConfig
    assert onnx_engine.meta.max_batch is None  # any batch on the CPU, whatever the export's range says
    from_manifest = EngineMeta.from_manifest(read_manifest(artifacts["onnx"]), artifacts["onnx"])
    assert from_manifest.max_batch == 32 and onnx_engine.meta == dataclasses.replace(from_manifest, max_batch=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        onnx_engine.meta.mean_rgb = (0.5, 0.5, 0.5)


@pytest.mark.parametrize(("changes", "message"), [
    ({"mean_rgb": [0.5, 0.5]}, r"mean_rgb must be three finite numbers \(R, G, B\), got \(0.5, 0.5\)"),
    ({"std_rgb": [0.2, 0.0, 0.2]}, r"std_rgb must be positive"),
    ({"color_order": "YUV"}, r"color_order must be one of RGB, BGR, got 'YUV'"),
    ({"input_hw": [256]}, r"input_hw must be two positive integers \(H, W\), got \(256,\)"),
    ({"num_joints": 16}, r"manifest says 16 joints .* not the 'coco' layout"),
    ({"flip_pairs": [[1, 2], [3, 40]]}, r"flip_pairs .* do not index the 17 joints"),
    ({"dataset": "crowdpose"}, r"manifest dataset 'crowdpose' is neither 'coco' nor 'mpii'"),
])
def test_manifest_values_no_model_can_have_are_one_line_errors(artifacts, tmp_path, changes, message):
    from tokenpose.manifest import ManifestError

    path = with_edited_manifest(artifacts, tmp_path, **changes)
    with pytest.raises(ManifestError, match=f"{path.name}: .*{message}") as info:
        load_engine(path)
    assert "\n" not in str(info.value)


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


# --------------------------------------------------------------------------- min_batch, AOTI options


def test_onnx_engine_reports_min_batch(artifacts):
    from tokenpose.engines.base import pad_batch

    engine = load_engine(artifacts["onnx"])
    assert engine.min_batch == 1 and engine.meta.min_batch == 1
    assert load_engine(artifacts["pth"]).min_batch == 1
    x = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)
    padded, n = pad_batch(x, 5)
    assert n == 2 and padded.shape == (5, 3) and (padded[2:] == x[-1]).all() and (padded[:2] == x).all()
    assert pad_batch(x, 1)[0] is x


def _fake_artifact(folder: Path, name: str, fmt: str, precision: str = "fp32", **fields) -> Path:
    from tokenpose.manifest import BatchRange, Manifest, write_manifest

    art = folder / name
    art.write_bytes(b"not a real " + fmt.encode())
    m = Manifest.for_config("t", artifact="", format=fmt, precision=precision,
                            batch=BatchRange(2, 4, 8).as_dict(), **fields)
    write_manifest(m, art)
    return art


def test_aoti_engine_rejects_options_it_cannot_honour(tmp_path):
    pt2 = _fake_artifact(tmp_path, "m.pt2", "pt2")
    with pytest.raises(TokenPoseError, match="already compiled"):
        load_engine(pt2, compile=True)
    with pytest.raises(TokenPoseError, match="fp32 model; its precision cannot be changed to fp16"):
        load_engine(pt2, precision="fp16")
    with pytest.raises(TokenPoseError, match="do not apply to the aoti engine"):
        load_engine(pt2, threads=2)
    # The options it can honour pass the checks and reach the loader (which rejects the fake bytes).
    with pytest.raises(TokenPoseError, match=r"cannot read AOTInductor package .*m\.pt2: "):
        load_engine(pt2, precision="fp32", compile=False)


# --------------------------------------------------------------------------- GPU name, strict manifests


class _FakeProps:
    name = b"NVIDIA Fake GPU\x00\x00\x00"


def _fake_cudart(module_name: str):
    """A stand-in for cuda-python's runtime module: host memory behind the CUDA runtime calls."""
    import ctypes
    import enum
    import types

    mod = types.ModuleType(module_name)

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    mod.cudaError_t, mod.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    mod.allocations = {}  # address -> ctypes buffer
    mod.streams = set()
    ok = cudaError_t.cudaSuccess

    def cudaMalloc(nbytes):
        buf = ctypes.create_string_buffer(max(1, nbytes))
        mod.allocations[ctypes.addressof(buf)] = buf
        return ok, ctypes.addressof(buf)

    def cudaFree(ptr):
        mod.allocations.pop(int(ptr))
        return (ok,)

    def cudaMemcpyAsync(dst, src, nbytes, kind, stream):
        assert stream in mod.streams
        ctypes.memmove(int(dst), int(src), int(nbytes))
        return (ok,)

    def cudaStreamCreate():
        mod.streams.add(7)
        return ok, 7

    def cudaStreamDestroy(stream):
        mod.streams.discard(stream)
        return (ok,)

    mod.cudaMalloc, mod.cudaFree, mod.cudaMemcpyAsync = cudaMalloc, cudaFree, cudaMemcpyAsync
    mod.cudaStreamCreate, mod.cudaStreamDestroy = cudaStreamCreate, cudaStreamDestroy
    mod.cudaStreamSynchronize = lambda stream: (ok,)
    mod.cudaGetDeviceProperties = lambda device: (ok, _FakeProps()) if device == 0 else (cudaError_t(1), None)
    return mod


def test_cudart_is_imported_from_cuda_bindings_first_then_the_legacy_module(monkeypatch):
    import sys
    import types

    from tokenpose import cuda as cuda_helper

    new, old = _fake_cudart("cuda.bindings.runtime"), _fake_cudart("cuda.cudart")
    pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    pkg.__path__, bindings.__path__ = [], []
    bindings.runtime, pkg.bindings, pkg.cudart = new, bindings, old
    monkeypatch.setitem(sys.modules, "cuda", pkg)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", new)
    monkeypatch.setitem(sys.modules, "cuda.cudart", old)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_helper.import_cudart() is new
    # the builder (what a manifest records) and the loader (what it is checked against) agree
    assert cuda_helper.gpu_name() == "NVIDIA Fake GPU"
    assert cuda_helper.gpu_name(3) is None
    # cuda-python 13 has no cuda.cudart; cuda-python < 12.6 has no cuda.bindings
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    del bindings.runtime
    assert cuda_helper.import_cudart() is old
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)
    del pkg.cudart
    assert cuda_helper.import_cudart() is None and cuda_helper.gpu_name() is None


def test_engine_manifest_without_gpu_or_unreadable_gpu_is_an_error(tmp_path, monkeypatch):
    from tokenpose import cuda as cuda_helper
    from tokenpose.manifest import (
        ManifestError,
        read_manifest,
        verify_manifest,
        write_manifest,
    )

    no_gpu = _fake_artifact(tmp_path, "a.engine", "tensorrt", gpu=None)
    m = read_manifest(no_gpu)
    m.versions["tensorrt"] = "10.3.0"
    write_manifest(m, no_gpu)
    with pytest.raises(ManifestError, match="records no GPU name"):
        verify_manifest(no_gpu, tensorrt_version_now="10.3.0", gpu_now="NVIDIA H100 80GB HBM3")

    engine = _fake_artifact(tmp_path, "b.engine", "tensorrt", gpu="NVIDIA H100 80GB HBM3")
    m = read_manifest(engine)
    m.versions["tensorrt"] = "10.3.0"
    write_manifest(m, engine)
    monkeypatch.setattr(cuda_helper, "gpu_name", lambda device=0: None)
    with pytest.raises(ManifestError, match="GPU name cannot be read"):
        verify_manifest(engine, tensorrt_version_now="10.3.0")
    monkeypatch.setattr(cuda_helper, "gpu_name", lambda device=0: "NVIDIA H100 80GB HBM3")
    assert verify_manifest(engine, tensorrt_version_now="10.3.0").gpu == "NVIDIA H100 80GB HBM3"
    assert verify_manifest(no_gpu, check_runtime=False).gpu is None  # an explicit opt-out only
    # artifacts without a GPU (pt2) keep working without one
    assert verify_manifest(_fake_artifact(tmp_path, "c.pt2", "pt2")).format == "pt2"


def test_onnx_model_without_metadata_props_is_a_mismatch(artifacts, tmp_path):
    import onnx

    from tokenpose.manifest import (
        ManifestError,
        read_manifest,
        verify_manifest,
        write_manifest,
    )

    model = onnx.load(str(artifacts["onnx"]))
    del model.metadata_props[:]
    path = tmp_path / artifacts["onnx"].name
    onnx.save(model, str(path))
    write_manifest(read_manifest(artifacts["onnx"]), path)  # a correct sha256, but no metadata
    with pytest.raises(ManifestError, match="no tokenpose.variant in its metadata_props"):
        verify_manifest(path)
    with pytest.raises(TokenPoseError, match="metadata_props"):
        load_engine(path)


# --------------------------------------------------------------------------- TensorRT engine buffers (no GPU)


class _FakeTrt:
    """The few TensorRT 10 names TensorRTEngine uses."""

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    @staticmethod
    def nptype(dtype):
        return dtype


class _FakeContext:
    """Records TensorRT calls; 'runs' the network as heatmap[b, j] = mean of input b (+ j)."""

    def __init__(self, cudart, joints=17, hm=(64, 48)) -> None:
        self.cudart, self.joints, self.hm = cudart, joints, hm
        self.shape = None
        self.addresses: dict[str, int] = {}
        self.address_calls = 0
        self.fail = False

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (self.shape[0], self.joints, *self.hm) if name == "heatmaps" else self.shape

    def set_tensor_address(self, name, ptr):
        self.address_calls += 1
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream):
        import ctypes

        if self.fail:
            return False
        n = int(np.prod(self.shape))
        x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addresses["images"])).reshape(self.shape)
        out_shape = self.get_tensor_shape("heatmaps")
        m = int(np.prod(out_shape))
        y = np.ctypeslib.as_array((ctypes.c_float * m).from_address(self.addresses["heatmaps"])).reshape(out_shape)
        y[:] = x.mean(axis=(1, 2, 3))[:, None, None, None] + np.arange(self.joints)[None, :, None, None]
        return True


class _FakeCudaEngine:
    num_io_tensors = 2

    def __init__(self, context, lo=1, hi=4) -> None:
        self.context, self.lo, self.hi = context, lo, hi

    def create_execution_context(self):
        return self.context

    def get_tensor_name(self, i):
        return ("images", "heatmaps")[i]

    def get_tensor_mode(self, name):
        return _FakeTrt.TensorIOMode.INPUT if name == "images" else _FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return (-1, 3, 256, 192) if name == "images" else (-1, 17, 64, 48)

    def get_tensor_profile_shape(self, name, profile):
        return (self.lo, 3, 256, 192), (2, 3, 256, 192), (self.hi, 3, 256, 192)

    def get_tensor_dtype(self, name):
        return np.float32


def test_tensorrt_engine_allocates_once_and_frees_on_close(tmp_path, monkeypatch):
    from tokenpose import cuda as cuda_helper
    from tokenpose.engines.base import EngineMeta
    from tokenpose.engines.tensorrt_engine import TensorRTEngine
    from tokenpose.manifest import read_manifest

    cudart = _fake_cudart("cuda.bindings.runtime")
    monkeypatch.setattr(cuda_helper, "import_cudart", lambda: cudart)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the cuda-python buffers
    manifest = read_manifest(_fake_artifact(tmp_path, "m.engine", "tensorrt", gpu="g"))
    context = _FakeContext(cudart)
    meta = EngineMeta.from_manifest(manifest, tmp_path / "m.engine")
    engine = TensorRTEngine(tmp_path / "m.engine", manifest, meta, _FakeCudaEngine(context, 2, 4), _FakeTrt)
    assert (engine.min_batch, engine.max_batch) == (2, 4) == (engine.meta.min_batch, engine.meta.max_batch)
    assert len(cudart.allocations) == 2 and context.address_calls == 2  # max-batch buffers, addresses once
    sizes = sorted(len(b) for b in cudart.allocations.values())
    assert sizes == sorted([4 * 3 * 256 * 192 * 4, 4 * 17 * 64 * 48 * 4])
    rng = np.random.default_rng(0)
    for b in (2, 4, 3):
        x = rng.standard_normal((b, 3, 256, 192)).astype(np.float32)
        out = engine(x)
        assert out.shape == (b, 17, 64, 48) and out.dtype == np.float32
        np.testing.assert_allclose(out[:, 5, 0, 0], x.mean(axis=(1, 2, 3)) + 5, rtol=1e-5, atol=1e-5)
    assert len(cudart.allocations) == 2 and context.address_calls == 2  # nothing per call
    with pytest.raises(TokenPoseError, match="below the engine profile's minimum 2"):
        engine(np.zeros((1, 3, 256, 192), dtype=np.float32))
    context.fail = True
    with pytest.raises(TokenPoseError, match="execution failed"):
        engine(np.zeros((2, 3, 256, 192), dtype=np.float32))
    assert len(cudart.allocations) == 2  # a failed call leaks nothing
    engine.close()
    assert cudart.allocations == {} and cudart.streams == set()
    engine.close()  # idempotent
    with pytest.raises(TokenPoseError, match="closed"):
        engine(np.zeros((2, 3, 256, 192), dtype=np.float32))


def test_mismatched_timing_cache_starts_a_fresh_one():
    from tokenpose.export.tensorrt import use_timing_cache

    class Config:
        """The two IBuilderConfig calls: a cache from another TensorRT/GPU is refused."""

        def __init__(self) -> None:
            self.cache = None

        def create_timing_cache(self, data: bytes):
            if data == b"garbage":
                raise RuntimeError("invalid timing cache")
            return {"data": data}

        def set_timing_cache(self, cache, ignore_mismatch: bool):
            assert ignore_mismatch is False
            if cache["data"] == b"other gpu":
                return False
            self.cache = cache
            return True

    for stale in (b"other gpu", b"garbage"):
        config, log = Config(), []
        with pytest.warns(UserWarning, match="starting a fresh cache"):
            cache = use_timing_cache(config, stale, "t.cache", log)
        assert cache == {"data": b""} and config.cache is cache and "does not fit" in log[0]
    config = Config()
    assert use_timing_cache(config, b"good", "t.cache") == {"data": b"good"} == config.cache


def test_compiled_torch_engine_matches_eager(artifacts):
    inputs, _, _ = real_crops(TINY, n_images=1)
    eager = load_engine(artifacts["pth"])
    compiled = load_engine(artifacts["pth"], compile=True)  # Inductor, weights frozen in: ~15 s to compile
    np.testing.assert_allclose(compiled(inputs), eager(inputs), atol=1e-4)


def test_reduced_precision_without_instructions_warns_once(artifacts, monkeypatch):
    from tokenpose.engines import torch_engine

    assert torch_engine.emulated_reason("bf16", "cpu", {"avx2", "fma"}) == (
        "bf16 on this CPU is emulated (none of avx512_bf16, amx_bf16): slower than fp32")
    assert torch_engine.emulated_reason("bf16", "cpu", {"avx2", "amx_bf16"}) is None
    assert torch_engine.emulated_reason("fp16", "cpu", {"avx512_bf16"}) is not None
    assert torch_engine.emulated_reason("fp16", "cpu", {"avx512_fp16"}) is None
    assert torch_engine.emulated_reason("fp32", "cpu", set()) is None
    monkeypatch.setattr(torch_engine, "cpu_flags", lambda: None)  # flags unknown: nothing is claimed
    assert torch_engine.emulated_reason("bf16", "cpu") is None

    monkeypatch.setattr(torch_engine, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(torch_engine, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the engine, not Python's filter, must keep it to one
        first = load_engine(artifacts["pth"], precision="bf16")
        load_engine(artifacts["pth"], precision="bf16")
    assert [str(w.message) for w in caught if "emulated" in str(w.message)] == [
        "TorchEngine: bf16 on this CPU is emulated (none of avx512_bf16, amx_bf16): slower than fp32"]
    assert first.emulated and load_engine(artifacts["pth"]).emulated is None


def test_torch_engine_micro_batches_on_cpu_with_the_same_heatmaps(artifacts):
    from tokenpose.engines.torch_engine import CPU_MICRO_BATCH, TorchEngine

    inputs = np.random.default_rng(0).standard_normal((2 * CPU_MICRO_BATCH + 3, 3, *TINY.input_hw)).astype(np.float32)
    sliced = load_engine(artifacts["pth"])
    whole = load_engine(artifacts["pth"], micro_batch=None)
    assert sliced.micro_batch == CPU_MICRO_BATCH and whole.micro_batch is None
    assert load_engine(artifacts["pth"], compile=True).micro_batch is None  # compiled: the batch whole
    calls = []
    sliced._forward = lambda x, f=sliced._forward: calls.append(x.shape[0]) or f(x)
    np.testing.assert_allclose(sliced(inputs), whole(inputs), rtol=0, atol=1e-5)
    assert calls == [CPU_MICRO_BATCH, CPU_MICRO_BATCH, 3]
    for bad in (-1, "8", 2.5, True):
        with pytest.raises(TokenPoseError, match="micro_batch must be"):
            TorchEngine(peaked_model(), micro_batch=bad)


@pytest.mark.parametrize("backbone", ["stem", "hrnet_w32"])
def test_torch_engine_folds_batchnorm_into_convolutions_with_the_same_output(backbone):
    from tokenpose.engines.torch_engine import TorchEngine

    cfg = dataclasses.replace(TINY, name=f"tiny-{backbone}", backbone=backbone, patch_hw=(4, 3))
    torch.manual_seed(0)
    model = TokenPose(cfg).eval()
    for m in model.modules():  # running statistics and affines a trained model would have
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.data.normal_(0, 0.1)
            m.running_var.data.uniform_(0.5, 2.0)
    engine = TorchEngine(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in engine.model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0  # the caller's model is untouched
    x = np.random.default_rng(1).standard_normal((2, 3, *cfg.input_hw)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine(x), expected, rtol=0, atol=2e-5)


FAULTS_SCRIPT = """
import resource, sys, torch
from tokenpose.engines.cpu import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "on" else False
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        t = torch.ones(16 * 2**20)  # 64 MB: above glibc's largest mmap threshold, so mmapped by default
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# The heap settles after a round or two (other allocations can sit between): the fewest of 5 rounds.
print(applied, min(faults() for _ in range(5)))
"""


@pytest.mark.parametrize("mode", ["on", "off", "env"])
def test_retain_freed_memory_stops_the_page_faults_of_reallocated_tensors(mode):
    """The malloc policy of the torch-based CPU engines: a freed 64 MB tensor's pages are reused by
    the next one (no new page faults), instead of being unmapped and faulted in again each time."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TOKENPOSE_MALLOC": "system" if mode == "env" else ""}
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, "off" if mode == "off" else "on"], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    applied, faults = out[0] == "True", int(out[1])
    pages = 3 * 16 * 2**20 * 4 // 4096
    if mode == "on":
        assert applied and faults < pages // 20, faults
    else:  # not asked for, or TOKENPOSE_MALLOC=system: each new tensor faults all of its pages in
        assert not applied and faults > pages // 2, faults


def test_onnx_engine_micro_batches_on_cpu_with_the_same_heatmaps(artifacts):
    from tokenpose.engines.onnx_engine import CPU_MICRO_BATCH

    inputs = np.random.default_rng(0).standard_normal((CPU_MICRO_BATCH + 5, 3, *TINY.input_hw)).astype(np.float32)
    sliced = load_engine(artifacts["onnx"], device="cpu")
    whole = load_engine(artifacts["onnx"], device="cpu", micro_batch=0)
    assert sliced.micro_batch == CPU_MICRO_BATCH and whole.micro_batch is None
    calls = []
    sliced._run = lambda x, f=sliced._run: calls.append(x.shape[0]) or f(x)
    np.testing.assert_allclose(sliced(inputs), whole(inputs), rtol=0, atol=1e-5)
    assert calls == [CPU_MICRO_BATCH, 5]
    with pytest.raises(TokenPoseError, match="micro_batch must be"):
        load_engine(artifacts["onnx"], device="cpu", micro_batch="eight")
