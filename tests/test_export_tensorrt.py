"""TensorRT engine builds: run only where `tensorrt` imports and a CUDA GPU is present.

Builds FP32, FP16 and INT8 engines of TokenPose-T from the exporter's ONNX models, checks the
strongly typed build, the optimisation profile, the timing cache reuse, the layer precisions the
inspector reports, the manifest checks, and the FP32 engine's output (TF32 cleared) against ONNX
Runtime, through both device-buffer paths of the engine (torch and cuda-python).
"""

from __future__ import annotations

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt")
torch = pytest.importorskip("torch")

from tokenpose.export import (
    BatchRange,
    ExportOptions,
    ManifestError,
    export_model,
    verify_manifest,
)
from tokenpose.manifest import read_manifest
from tokenpose.export.onnx import ort_session
from tokenpose.cuda import gpu_name
from tokenpose.export.tensorrt import build_engine

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]
if not torch.cuda.is_available():
    pytest.skip("TensorRT tests need a CUDA device", allow_module_level=True)

COCO_JSON = "tests/fixtures/coco_mini/annotations/person_keypoints_mini.json"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt")
    lines: list[str] = []
    summary = export_model(
        ExportOptions(variant="t", out_dir=out, fp16=True, int8=True, calib_data=COCO_JSON, calib_size=8,
                      batch=BatchRange(1, 2, 4), verify_batches=(1, 2), engine=True, workspace_gib=2),
        log=lines.append,
    )
    return out, summary, lines


def test_every_onnx_model_gets_an_engine_with_a_manifest(engines):
    out, summary, _ = engines
    built = [a for a in summary.artifacts if a.format == "tensorrt"]
    assert sorted(a.precision for a in built) == ["fp16", "fp32", "int8"]
    for a in built:
        m = verify_manifest(a.path)
        assert m.format == "tensorrt" and m.gpu == gpu_name() and m.versions["tensorrt"] == trt.__version__
        assert m.source == f"tokenpose_t_{a.precision}.onnx"
        assert m.verification["profile"]["max"] == [4, 3, 256, 192]
        assert m.verification["strongly_typed"] is True
    assert (out / "tokenpose.timing.cache").stat().st_size > 0


def test_reduced_precision_engines_did_not_fall_back(engines):
    out, _, lines = engines
    for precision in ("fp16", "int8"):
        lp = read_manifest(out / f"tokenpose_t_{precision}.engine").verification["layer_precisions"]
        assert lp["compute_layers"] > 0
        assert lp["status"] == "ok" and not lp["fallback"], lp["message"]
    assert not any(line.startswith("warning:") and "fell back" in line for line in lines)


def test_engine_manifest_rejects_other_tensorrt_or_gpu(engines):
    out, _, _ = engines
    path = out / "tokenpose_t_fp32.engine"
    with pytest.raises(ManifestError, match="rebuild the engine"):
        verify_manifest(path, tensorrt_version_now="0.0.1")
    with pytest.raises(ManifestError, match="rebuild the engine"):
        verify_manifest(path, gpu_now="Some Other GPU")


def test_timing_cache_is_reused(engines, tmp_path):
    out, _, _ = engines
    cache = out / "tokenpose.timing.cache"
    before = cache.read_bytes()
    result = build_engine(out / "tokenpose_t_fp32.onnx", precision="fp32", batch=BatchRange(1, 2, 4),
                          input_hw=(256, 192), timing_cache=cache, workspace_bytes=1 << 30)
    assert result.engine and cache.stat().st_size >= len(before)
    assert result.strongly_typed and not result.tf32  # FP32 means FP32 unless tf32=True


def test_mismatched_timing_cache_starts_fresh_with_a_warning(engines, tmp_path):
    out, _, _ = engines
    cache = tmp_path / "stale.timing.cache"
    cache.write_bytes(b"a timing cache from another TensorRT version or GPU")
    with pytest.warns(UserWarning, match="starting a fresh cache"):
        result = build_engine(out / "tokenpose_t_fp32.onnx", precision="fp32", batch=BatchRange(1, 2, 4),
                              input_hw=(256, 192), timing_cache=cache, workspace_bytes=1 << 30)
    assert result.engine and cache.read_bytes() != b"a timing cache from another TensorRT version or GPU"


def test_tensorrt_engine_runs_uneven_chunks_and_closes(engines):
    from tokenpose.engines import PosePredictor, load_engine

    out, _, _ = engines
    engine = load_engine(out / "tokenpose_t_fp32.engine")
    assert (engine.min_batch, engine.max_batch) == (1, 4)
    pred = PosePredictor(engine).predict(np.zeros((480, 640, 3), np.uint8), [[10, 10, 200, 300]] * 5)
    assert len(pred) == 5
    engine.close()
    engine.close()


def test_fp32_engine_matches_onnxruntime(engines):
    out, _, _ = engines
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine((out / "tokenpose_t_fp32.engine").read_bytes())
    context = engine.create_execution_context()
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 192)).astype(np.float32)
    context.set_input_shape("images", x.shape)
    inp = torch.from_numpy(x).cuda()
    outp = torch.empty((2, 17, 64, 48), device="cuda")
    context.set_tensor_address("images", inp.data_ptr())
    context.set_tensor_address("heatmaps", outp.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    ref = ort_session(out / "tokenpose_t_fp32.onnx").run(None, {"images": x})[0]
    assert np.abs(outp.cpu().numpy() - ref).max() < 1e-3  # TF32 is cleared: FP32 kernels on both sides


@pytest.mark.parametrize("buffers", ["torch", "cuda-python"])
def test_tensorrt_engine_buffer_paths_match_onnxruntime(engines, monkeypatch, buffers):
    """TOKENPOSE_TENSORRT_BUFFERS makes a GPU run exercise the cuda-python buffers too (with CUDA
    PyTorch present the torch buffers are the default)."""
    from tokenpose.engines import load_engine
    from tokenpose.engines.tensorrt_engine import BUFFERS_ENV

    if buffers == "cuda-python":
        pytest.importorskip("cuda.bindings.runtime", reason="cuda-python (cuda-bindings) is not installed")
    out, _, _ = engines
    monkeypatch.setenv(BUFFERS_ENV, buffers)
    x = np.random.default_rng(1).standard_normal((3, 3, 256, 192)).astype(np.float32)
    with load_engine(out / "tokenpose_t_fp32.engine") as engine:
        got = engine(x)
    ref = ort_session(out / "tokenpose_t_fp32.onnx").run(None, {"images": x})[0]
    assert np.abs(got - ref).max() < 1e-3
