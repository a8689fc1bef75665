"""Export: FP32 parity for every variant, FP16 / INT8 models, manifests, CLI and bad input.

Everything runs real exports, real ONNX Runtime sessions and real coco_mini crops on CPU. The
TensorRT builder's GPU path is in test_export_tensorrt.py; its pure parts are tested here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
import typer
from typer.testing import CliRunner

from tokenpose import create_model, list_variants
from tokenpose.errors import CheckpointError, TokenPoseError
from tokenpose.export import (
    BatchRange,
    CalibrationError,
    ExportError,
    ExportOptions,
    Int8Settings,
    ManifestError,
    export_model,
    load_calibration_set,
    manifest_path,
    read_manifest,
    verify_manifest,
)
from tokenpose.manifest import Manifest, sha256_file, write_manifest
from tokenpose.export.onnx import (
    FORBIDDEN_OPS,
    check_graph,
    export_onnx_model,
    ort_session,
    verify_against_torch,
)
from tokenpose.export.precision import classify_matmuls
from tokenpose.export.tensorrt import (
    TensorRTError,
    layer_datatype,
    profile_shapes,
    read_timing_cache,
    summarize_layer_precisions,
    tensorrt_unavailable_reason,
    write_timing_cache,
)

COCO_JSON = "tests/fixtures/coco_mini/annotations/person_keypoints_mini.json"
SLOW_VARIANTS = {"b", "l-d6", "l-d24", "l-d24-384", "l-d6-mpii"}


def _app():
    from tokenpose.cli.export import command

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    return app


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One `tokenpose-export` run for the module: TokenPose-T (seeded weights saved as an official
    checkpoint) to FP32 + FP16 + INT8, calibrated on 8 coco_mini crops. Returns (out, model, lines)."""
    from tokenpose.models.checkpoints import save_weights

    out = tmp_path_factory.mktemp("export_t")
    torch.manual_seed(0)
    model = create_model("t")
    ckpt = out.parent / "t_seeded.pth"
    save_weights(model, ckpt)
    res = CliRunner().invoke(_app(), [
        "--variant", "t", "--checkpoint", str(ckpt), "--fp16", "--int8", "--calib-data", COCO_JSON,
        "--calib-size", "8", "--batch", "1:4:8", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    return out, model, res.output.splitlines()


# --------------------------------------------------------------------------- FP32 parity, every variant


@pytest.mark.parametrize(
    "variant",
    [pytest.param(v, marks=pytest.mark.slow) if v in SLOW_VARIANTS else v for v in list_variants()],
)
def test_fp32_onnx_matches_pytorch_for_every_variant(variant, request):
    """One export per variant: checker, no Einsum/ScatterND, dynamic batch, ORT == torch at B=1,2.

    T checks the module's CLI export (the simplified graph that ships); the others export here.
    """
    if variant == "t":
        out, model, _ = request.getfixturevalue("exported")
        proto = onnx.load(str(out / "tokenpose_t_fp32.onnx"))
    else:
        torch.manual_seed(0)
        model = create_model(variant)
        proto = export_onnx_model(model)
    counts = check_graph(proto)
    assert not set(FORBIDDEN_OPS) & set(counts)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["heatmaps"]
    session = ort_session(proto)
    report = verify_against_torch(model, proto, batches=(1, 2), session=session)
    cfg = model.config
    assert [r["batch"] for r in report.rows] == [1, 2]
    assert report.passed and report.max_abs < 1e-4, report.to_dict()
    heatmaps = session.run(None, {"images": np.zeros((2, 3, *cfg.input_hw), np.float32)})[0]
    assert heatmaps.shape == (2, cfg.num_joints, *cfg.heatmap_hw)


# --------------------------------------------------------------------------- full pipeline, variant T


def test_pipeline_writes_every_artifact_with_a_matching_manifest(exported):
    out, _, lines = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "tokenpose_t_fp16.onnx", "tokenpose_t_fp16.onnx.json",
        "tokenpose_t_fp32.onnx", "tokenpose_t_fp32.onnx.json",
        "tokenpose_t_int8.onnx", "tokenpose_t_int8.onnx.json",
    ], "no stray temp files, exactly one manifest per artifact"
    for precision in ("fp32", "fp16", "int8"):
        path = out / f"tokenpose_t_{precision}.onnx"
        m = verify_manifest(path)
        assert m.sha256 == sha256_file(path)
        assert m.precision == precision and m.variant == "t"
        assert m.input_hw == (256, 192) and m.heatmap_hw == (64, 48) and m.num_joints == 17
        assert m.color_order == "RGB" and m.mean_rgb == (0.485, 0.456, 0.406)
        assert (1, 2) in m.flip_pairs and m.batch == {"min": 1, "opt": 4, "max": 8}
        assert not m.random_weights and m.checkpoint == "t_seeded.pth"
        assert m.checkpoint_sha256 == sha256_file(out.parent / "t_seeded.pth")
        assert m.versions["torch"] == torch.__version__.split("+")[0] or m.versions["torch"].startswith(
            torch.__version__.split("+")[0])
        assert m.versions["onnx"] == onnx.__version__ and m.versions["onnxruntime"]
        assert m.created and m.opset == 17
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert meta["tokenpose.variant"] == "t" and meta["tokenpose.precision"] == precision
        assert json.loads(meta["tokenpose.flip_pairs"])[0] == [1, 2]
        assert "tokenpose.sha256" not in meta
    assert not any("RANDOMLY INITIALISED" in line for line in lines)
    if tensorrt_unavailable_reason() is not None:
        assert "engine step skipped: tensorrt is not installed" in "\n".join(lines)


def test_fp32_artifact_records_parity_and_simplification(exported):
    out, _, lines = exported
    m = read_manifest(out / "tokenpose_t_fp32.onnx")
    parity = m.verification["onnxruntime_vs_torch"]
    assert parity["passed"] and parity["max_abs"] < 1e-4 and parity["inputs"] == "real crops"
    simp = m.verification["simplification"]
    assert simp["applied"] and simp["nodes_after"] < simp["nodes_before"]
    model = onnx.load(str(out / "tokenpose_t_fp32.onnx"))
    assert len(model.graph.node) == simp["nodes_after"]
    assert any("max |heatmap diff|" in line and "batch 4" in line for line in lines)


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_fp16_model_keeps_layernorm_and_softmax_in_fp32(exported):
    out, _, _ = exported
    model = onnx.load(str(out / "tokenpose_t_fp16.onnx"))
    elem = onnx.TensorProto
    assert model.graph.input[0].type.tensor_type.elem_type == elem.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == elem.FLOAT
    inits = {i.name: i.data_type for i in model.graph.initializer}
    matmul_weights = [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert matmul_weights and all(inits[w] == elem.FLOAT16 for w in matmul_weights)
    prod = _producers(model)
    sensitive = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert len(sensitive) == 12 * 3 + 2  # 12 layers x (2 LN + softmax) + 2 head LNs
    for n in sensitive:
        src = prod.get(n.input[0])
        assert src is not None and src.op_type == "Cast", n.name
        assert next(a.i for a in src.attribute if a.name == "to") == elem.FLOAT, n.name
        for w in n.input[1:]:
            if w in inits:
                assert inits[w] == elem.FLOAT, (n.name, w)
    m = read_manifest(out / "tokenpose_t_fp16.onnx")
    assert m.higher_precision["fp32_ops"] == ["LayerNormalization", "Softmax"]


def test_fp16_agrees_with_fp32_on_real_crops(exported):
    out, _, lines = exported
    calib = load_calibration_set(COCO_JSON, "t", max_samples=8)
    ref = ort_session(out / "tokenpose_t_fp32.onnx").run(None, {"images": calib.images})[0]
    got = ort_session(out / "tokenpose_t_fp16.onnx").run(None, {"images": calib.images})[0]
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert 0 < np.abs(got - ref).max() < 5e-3 * max(1.0, np.abs(ref).max())
    v = read_manifest(out / "tokenpose_t_fp16.onnx").verification["vs_fp32"]
    assert v["n"] == 8 and v["max_abs"] == pytest.approx(float(np.abs(got - ref).max()), rel=1e-3)
    assert v["oks_mean"] is not None
    assert any(line.startswith("fp16 vs fp32 on 8 real crops") for line in lines)


def test_int8_model_pairs_uint8_activations_with_symmetric_per_channel_int8_weights(exported):
    out, _, _ = exported
    model = onnx.load(str(out / "tokenpose_t_int8.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert q and dq
    for n in dq:  # weights: symmetric int8 (zero point 0); activations: uint8, the x86 kernels' pairing
        zp = inits[n.input[2]]
        if n.input[0] in inits and inits[n.input[0]].ndim == 1:  # a Conv bias: int32 at scale x_scale * w_scale
            assert zp.dtype == np.int32 and not zp.any(), n.name
        elif n.input[0] in inits:
            assert zp.dtype == np.int8 and not zp.any(), n.name
        else:
            assert zp.dtype == np.uint8, n.name
    weight_dq = [n for n in dq if n.input[0] in inits and inits[n.input[0]].dtype == np.int8
                 and inits[n.input[0]].ndim >= 2]
    assert weight_dq and all(inits[n.input[1]].size > 1 for n in weight_dq), "per-channel weight scales"
    prod = _producers(model)
    by_name = {n.name: n for n in model.graph.node}
    m = read_manifest(out / "tokenpose_t_int8.onnx")
    kept = m.higher_precision["fp32_nodes"]
    assert kept, "attention matmuls and the head stay in float32"
    for name in kept:
        node = by_name[name]
        assert all(prod.get(i) is None or prod[i].op_type != "DequantizeLinear" for i in node.input), name
    quantized_mm = [n for n in model.graph.node if n.op_type == "MatMul" and n.name not in kept]
    assert quantized_mm and all(prod[n.input[0]].op_type == "DequantizeLinear" for n in quantized_mm)
    # MatMul outputs stay float32 (MatMulIntegerToFloat), so no MatMul output is quantized.
    assert not any(prod.get(n.input[0]) is not None and prod[n.input[0]].op_type == "MatMul" for n in q)
    assert sorted(m.higher_precision["int8_nodes"]) == sorted(
        n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul") and n.name not in kept)
    kernels = m.onnxruntime["kernels"]
    assert kernels.get("QLinearConv", 0) + kernels.get("MatMulIntegerToFloat", 0) >= len(quantized_mm), kernels
    assert m.onnxruntime["fusions"] == ["attention", "split_matmul", "quantized_relu"]
    # T has no ReLU (its tokens are pixel patches): nothing for quantized_relu.
    assert m.onnxruntime["fused"] == {"attention": 12, "split_matmul": 12, "quantized_relu": 0}
    cal = m.calibration
    assert cal["num_crops"] == 8 and cal["method"] == "minmax" and cal["kind"] == "coco"
    assert m.verification["vs_fp32"]["oks_mean"] > 0.5


@pytest.fixture(scope="module")
def exported_gpu_int8(tmp_path_factory):
    """A peaked TINY model (heatmaps with one clear peak, like a trained model's) exported to FP32,
    INT8 and the GPU INT8 model (`--int8-gpu`), calibrated on 16 coco_mini crops."""
    from test_engines import TINY, peaked_model

    from tokenpose.models.checkpoints import save_weights

    out = tmp_path_factory.mktemp("export_gpu_int8")
    pth = out.parent / "tiny_peaked.pth"
    save_weights(peaked_model(TINY), pth, variant={"model_config": dataclasses.asdict(TINY)})
    lines: list[str] = []
    summary = export_model(ExportOptions(
        variant=TINY, out_dir=out, checkpoint=pth, int8=True, int8_gpu=True, calib_data=COCO_JSON,
        calib_size=16, simplify=False, verify_batches=(1, 2), engine=False,
    ), log=lines.append)
    return out, summary, lines


def test_gpu_int8_model_is_the_int8_qdq_on_the_fp16_model(exported_gpu_int8):
    out, summary, lines = exported_gpu_int8
    assert [a.path.name for a in summary.artifacts] == [
        "tokenpose_tiny-t_fp32.onnx", "tokenpose_tiny-t_int8.onnx", "tokenpose_tiny-t_int8-fp16.onnx"]
    cpu, gpu = (read_manifest(out / f"tokenpose_tiny-t_{name}.onnx") for name in ("int8", "int8-fp16"))
    assert (cpu.precision, cpu.int8_base, cpu.opset) == ("int8", "fp32", 17)
    assert (gpu.precision, gpu.int8_base, gpu.opset) == ("int8", "fp16", 19)
    assert gpu.calibration == cpu.calibration, "one calibration for both"
    assert gpu.higher_precision["fp16"]["fp32_ops"] == ["LayerNormalization", "Softmax"]
    verify_manifest(out / "tokenpose_tiny-t_int8-fp16.onnx")

    elem = onnx.TensorProto
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / "tokenpose_tiny-t_int8-fp16.onnx")))
    cpu_model = onnx.load(str(out / "tokenpose_tiny-t_int8.onnx"))
    assert model.opset_import[0].version == 19
    assert model.graph.input[0].type.tensor_type.elem_type == elem.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == elem.FLOAT
    inits = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) == sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in cpu_model.graph.node)
    assert all(inits[n.input[1]].data_type == elem.FLOAT16 for n in qdq), "float16 scales"
    assert all(inits[n.input[2]].data_type == elem.INT8 for n in qdq if len(n.input) > 2)
    prod = _producers(model)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    # INT8 where quantized: every quantized Conv/MatMul reads DequantizeLinear outputs directly.
    quantized = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul")
                 and n.name not in cpu.higher_precision["fp32_nodes"]]
    assert quantized and all(prod[i].op_type == "DequantizeLinear" for n in quantized for i in n.input[:2])
    # FP16 elsewhere: the unquantized attention matmuls and the head compute in float16 ...
    kept = cpu.higher_precision["fp32_nodes"]
    assert kept and all(types[n.output[0]] == elem.FLOAT16 for n in model.graph.node if n.name in kept)
    # ... and LayerNorm / Softmax in float32, as in the FP16 model.
    sensitive = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert sensitive and all(types[n.output[0]] == elem.FLOAT for n in sensitive)


def test_gpu_int8_model_passes_the_int8_accuracy_gate_on_real_crops(exported_gpu_int8):
    out, _, lines = exported_gpu_int8
    calib = load_calibration_set(COCO_JSON, "t", max_samples=16)
    ref = ort_session(out / "tokenpose_tiny-t_fp32.onnx").run(None, {"images": calib.images})[0]
    diffs = {}
    for name in ("int8", "int8-fp16"):
        got = ort_session(out / f"tokenpose_tiny-t_{name}.onnx").run(None, {"images": calib.images})[0]
        v = read_manifest(out / f"tokenpose_tiny-t_{name}.onnx").verification["vs_fp32"]
        diffs[name] = float(np.abs(got - ref).max())
        assert v["n"] == 16 and v["max_abs"] == pytest.approx(diffs[name], rel=1e-3)
        assert v["oks_mean"] >= 0.95, (name, v)
    # FP16 compute adds rounding, not a second quantization: the error stays near INT8's own.
    assert 0 < diffs["int8-fp16"] <= 2 * diffs["int8"] + 1e-3, diffs
    assert any(line.startswith("int8-fp16 vs fp32 on 16 real crops") for line in lines)


def test_classify_matmuls_finds_attention_and_head(exported):
    proto = onnx.load(str(exported[0] / "tokenpose_t_fp32.onnx"))
    groups = classify_matmuls(proto)
    assert len(groups["attention"]) == 2 * 12  # Q K^T and softmax V per layer
    assert groups["head"] == ["/head/head.3/MatMul"]
    assert groups["patch"] == ["/Conv"]  # the patch embedding, computed as a strided convolution
    assert "/Conv" not in groups["weight"] and len(groups["weight"]) == 12 * 4 + 1 + 1  # + the last layer's own q


# --------------------------------------------------------------------------- manifest checks


def test_verify_manifest_rejects_a_changed_artifact(exported, tmp_path):
    out, _, _ = exported
    src = out / "tokenpose_t_fp32.onnx"
    copy = tmp_path / src.name
    shutil.copy(src, copy)
    with pytest.raises(ManifestError, match="no manifest"):
        verify_manifest(copy)
    shutil.copy(manifest_path(src), manifest_path(copy))
    assert verify_manifest(copy).precision == "fp32"
    with open(copy, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="sha256"):
        verify_manifest(copy)
    renamed = tmp_path / "other.onnx"
    shutil.copy(src, renamed)
    shutil.copy(manifest_path(src), manifest_path(renamed))
    with pytest.raises(ManifestError, match="describes"):
        verify_manifest(renamed)


def test_verify_manifest_checks_tensorrt_version_and_gpu(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized engine bytes")
    m = Manifest.for_config("t", artifact="", format="tensorrt", precision="fp16",
                            batch=BatchRange(1, 8, 32).as_dict(), gpu="NVIDIA H100 80GB HBM3")
    m.versions["tensorrt"] = "10.3.0"
    write_manifest(m, engine)
    ok = verify_manifest(engine, tensorrt_version_now="10.3.0", gpu_now="NVIDIA H100 80GB HBM3")
    assert ok.gpu == "NVIDIA H100 80GB HBM3"
    with pytest.raises(ManifestError, match=r"TensorRT 10\.3\.0 .* TensorRT 10\.8\.0"):
        verify_manifest(engine, tensorrt_version_now="10.8.0", gpu_now="NVIDIA H100 80GB HBM3")
    with pytest.raises(ManifestError, match="GPU 'NVIDIA H100 80GB HBM3' .* 'NVIDIA L4'"):
        verify_manifest(engine, tensorrt_version_now="10.3.0", gpu_now="NVIDIA L4")
    if tensorrt_unavailable_reason() is not None:
        with pytest.raises(ManifestError, match="tensorrt is not installed"):
            verify_manifest(engine)
    assert verify_manifest(engine, check_runtime=False).precision == "fp16"


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    art = tmp_path / "x.onnx"
    art.write_bytes(b"abc")
    manifest_path(art).write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        verify_manifest(art)
    manifest_path(art).write_text(json.dumps({"variant": "t"}))
    with pytest.raises(ManifestError, match="lacks the fields"):
        read_manifest(art)


# --------------------------------------------------------------------------- bad input


def test_batch_range_parsing():
    assert BatchRange.parse("1:8:32") == BatchRange(1, 8, 32)
    assert BatchRange.parse("16") == BatchRange(1, 16, 16)
    assert BatchRange.parse("2:4") == BatchRange(2, 4, 4)
    for bad in ("8:1:4", "0:1:2", "1:2:3:4", "a:b:c", "4:2"):
        with pytest.raises(ValueError, match="batch range"):
            BatchRange.parse(bad)


def test_checkpoint_of_another_variant_is_rejected(tmp_path):
    from tokenpose.models.checkpoints import save_weights

    ckpt = tmp_path / "t.pth"
    save_weights(create_model("t"), ckpt)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="it is a checkpoint of variant 't'"):
        export_model(ExportOptions(variant="s-v1", checkpoint=ckpt, out_dir=out), log=lambda m: None)
    assert not any(out.glob("*.onnx"))


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(ExportError, match="output folder"):
            export_model(ExportOptions(variant="t", out_dir=out), log=lambda m: None)
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ExportError, match="not writable"):
            export_model(ExportOptions(variant="t", out_dir=ro), log=lambda m: None)


def test_int8_needs_calibration_data(tmp_path):
    with pytest.raises(ValueError, match="--int8 needs --calib-data"):
        export_model(ExportOptions(variant="t", int8=True, out_dir=tmp_path), log=lambda m: None)


def test_calibration_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match="holds no images"):
        load_calibration_set(empty, "t")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"")
    (broken / "b.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(CalibrationError, match="no readable images"):
        load_calibration_set(broken, "t")
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration_set(tmp_path / "missing", "t")
    bad_json = tmp_path / "x.json"
    bad_json.write_text(json.dumps([1, 2]))
    with pytest.raises(CalibrationError, match="not a COCO annotation json"):
        load_calibration_set(bad_json, "t")
    bad_json.write_text("{")
    with pytest.raises(CalibrationError, match="cannot read COCO json"):
        load_calibration_set(bad_json, "t")


def test_calibration_from_folder_and_coco_json(tmp_path, coco_mini):
    images = sorted((coco_mini / "images").glob("*.jpg"))[:3]
    for p in images:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "z_broken.png").write_bytes(b"")
    cs = load_calibration_set(tmp_path, "s-v1")
    assert cs.images.shape == (3, 3, 256, 192) and cs.images.dtype == np.float32
    assert cs.kind == "folder" and len(cs.skipped) == 1 and "z_broken.png" in cs.skipped[0]
    assert abs(float(cs.images.mean())) < 2.0 and cs.images.std() > 0.3  # normalised, not raw pixels
    coco = load_calibration_set(COCO_JSON, "t", max_samples=10)
    assert len(coco) == 10 and coco.kind == "coco" and (coco.image_ids > 0).all()
    first = int(coco.image_ids[0])
    without = load_calibration_set(COCO_JSON, "t", max_samples=10, exclude_image_ids=[first])
    assert first not in set(without.image_ids.tolist())


def test_failed_verification_writes_nothing(tmp_path):
    """A verification failure raises before anything lands under a final name."""
    with pytest.raises(ExportError, match="nothing was written"):
        export_model(ExportOptions(variant="t", out_dir=tmp_path, simplify=False, tolerance=0.0,
                                   verify_batches=(1,)), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_only_complete_files(tmp_path):
    """Ctrl-C in the middle of the FP16 step: the FP32 pair is complete, nothing else exists."""

    seen: list[str] = []

    def log(msg: str) -> None:
        seen.append(msg)
        if msg.startswith("fp16 vs fp32"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_model(ExportOptions(variant="t", out_dir=tmp_path, fp16=True, simplify=False,
                                   verify_batches=(1,)), log=log)
    assert "RANDOMLY INITIALISED" in seen[0]
    assert seen[-1].startswith("fp16 vs fp32 on 8 synthetic inputs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenpose_t_fp32.onnx", "tokenpose_t_fp32.onnx.json"]
    verify_manifest(tmp_path / "tokenpose_t_fp32.onnx")


# --------------------------------------------------------------------------- CLI


def test_cli_prints_the_verification_report(exported):
    _, _, lines = exported
    text = "\n".join(lines)
    assert "fp32 ONNX Runtime vs PyTorch, batch 1: max |heatmap diff|" in text
    assert "fp32 ONNX Runtime vs PyTorch, batch 4" in text
    assert "fp16 vs fp32 on 8 real crops" in text and "in input pixels" in text
    assert "int8 vs fp32 on 8 real crops" in text and "OKS vs fp32 mean" in text
    assert "simplification: onnxslim" in text


@pytest.mark.parametrize("args, message", [
    (["--batch", "8:1:4"], "batch range must satisfy"),
    (["--int8"], "--int8 needs --calib-data"),
    (["--variant", "nope"], "unknown variant"),
    (["--calib-data", "/nonexistent/dir"], "calibration data not found"),
    (["--opset", "13"], "opset must be >= 17"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    base = ["--variant", "t", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(_app(), base + args)
    assert res.exit_code == 1, res.output
    err = res.output.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], res.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_is_registered_in_root_app():
    from tokenpose.cli.main import app

    res = CliRunner().invoke(app, ["export", "--help"])
    assert res.exit_code == 0 and "--int8" in res.output and "--calib-data" in res.output


# --------------------------------------------------------------------------- TensorRT pure parts (no GPU)


def test_profile_shapes_from_batch_range():
    assert profile_shapes(BatchRange(1, 8, 32), (256, 192)) == {
        "min": (1, 3, 256, 192), "opt": (8, 3, 256, 192), "max": (32, 3, 256, 192)}


def _trt_tensor(name, fmt, dims=(-1, 192, 32)):
    """One tensor entry as TensorRT 10's inspector writes it (LayerInformationFormat.JSON, DETAILED)."""
    return {"Name": name, "Location": "Device", "Dimensions": list(dims), "Format/Datatype": fmt}


def _trt_layer(name, kind, inputs, outputs, **extra):
    return {"Name": name, "LayerType": kind, "Inputs": inputs, "Outputs": outputs, "TacticName": "", "StreamId": 0,
            "Metadata": "", **extra}


def test_layer_precision_summary_flags_silent_fp32_fallback():
    fp32, half, int8 = "Row major linear FP32", "Channel major FP16 format where channel % 8 == 0", "Row major linear Int8"
    t = _trt_tensor

    def engine(*layers):
        return {"Layers": list(layers), "Bindings": ["images", "heatmaps"]}

    # A TensorRT 10 FP16 engine of TokenPose: the patch convolution after a Cast of the FP32 network
    # input, then one Myelin region (the transformer) whose boundary tensors are the FP32 input of a
    # cast and an FP16 output, then the head matmul in FP16 and a cast back to the FP32 output.
    good = engine(
        _trt_layer("/Cast", "Cast", [t("images", fp32, (-1, 3, 256, 192))], [t("/Cast_output_0", "Half")]),
        _trt_layer("Reformatting CopyNode for Input Tensor 0 to /patch/Conv", "Reformat",
                   [t("/Cast_output_0", "Row major linear FP16 format")], [t("/Cast_output_0 copy", half)],
                   ParameterType="Reformat", Origin="REFORMAT"),
        _trt_layer("/patch/Conv", "CaskConvolution", [t("/Cast_output_0 copy", half)], [t("/patch/Conv_out", half)],
                   ParameterType="Convolution", Kernel=[16, 12]),
        _trt_layer("{ForeignNode[/blocks.0/norm1/LayerNormalization.../blocks.11/Add_1]}", "Myelin",
                   [t("/patch/Conv_out", fp32), t("keypoint_tokens", fp32)], [t("/blocks.11/Add_1_output_0", "Half")]),
        _trt_layer("/head/MatMul", "MatrixMultiply", [t("/blocks.11/Add_1_output_0", "Half")], [t("/head/out", "Half")]),
        _trt_layer("/Cast_1", "Cast", [t("/head/out", "Half")], [t("heatmaps", fp32, (-1, 17, 64, 48))]),
    )
    s = summarize_layer_precisions(json.dumps(good), "fp16")
    assert not s["fallback"], s["message"]
    assert s["compute_layers"] == 2 and s["compute_layers_fp32"] == []
    assert s["fused_layers"] == 1 and s["reformat_layers"] == 3 and s["by_precision"]["fused"] == 1
    assert "fused" in s["message"]
    # The fused region alone (its first input is the FP32 network input): reported, never a fallback.
    only_fused = engine(_trt_layer("{ForeignNode[/patch/Conv.../head/MatMul]}", "Myelin",
                                   [t("images", fp32)], [t("heatmaps", fp32)]))
    s = summarize_layer_precisions(only_fused, "fp16")
    assert not s["fallback"] and s["fused_layers"] == 1 and s["compute_layers"] == 0
    # A layer is classified by all its tensors: FP32 in, Half out is an FP16 layer (a fused cast).
    mixed = engine(_trt_layer("/patch/Conv", "CaskConvolution", [t("images", fp32)], [t("x", "Half")]))
    assert summarize_layer_precisions(mixed, "fp16")["compute_layers_fp32"] == []

    # The real fallback: every unfused compute layer reads and writes FP32 in an FP16 engine.
    fell_back = engine(
        _trt_layer("/patch/Conv", "CaskConvolution", [t("images", fp32)], [t("c", fp32)]),
        _trt_layer("/head/MatMul", "MatrixMultiply", [t("c", "Float")], [t("m", "Float")]),
        _trt_layer("/norm/LayerNormalization", "Normalization", [t("m", fp32)], [t("heatmaps", fp32)]),
    )
    s = summarize_layer_precisions(json.dumps(fell_back), "fp16")
    assert s["fallback"] and "fell back" in s["message"] and s["by_precision"] == {"fp32": 3}
    assert s["compute_layers_fp32"] == ["/patch/Conv", "/head/MatMul"]
    assert not summarize_layer_precisions(fell_back, "fp32")["fallback"]

    # INT8 (Q/DQ): an Int8 convolution with an FP32 output is an INT8 layer; 2 of 3 compute layers in FP32 is not.
    int8_engine = engine(
        _trt_layer("/patch/Conv", "CaskConvolution", [t("q", int8)], [t("c", fp32)]),
        _trt_layer("{ForeignNode[/blocks.0...]}", "Myelin", [t("c", fp32)], [t("b", fp32)]),
        _trt_layer("/head/MatMul", "MatrixMultiply", [t("b", fp32)], [t("m", fp32)]),
        _trt_layer("/head/MatMul_1", "MatrixMultiply", [t("m", "Float")], [t("heatmaps", "Float")]),
    )
    s = summarize_layer_precisions(int8_engine, "int8")
    assert s["fallback"] and s["fused_layers"] == 1 and s["compute_layers"] == 3
    int8_engine["Layers"][2] = _trt_layer("/head/MatMul", "MatrixMultiply", [t("b", "Int8")], [t("m", "Half")])
    assert not summarize_layer_precisions(int8_engine, "int8")["fallback"]

    names_only = summarize_layer_precisions({"Layers": ["a", "b"], "Bindings": ["images", "heatmaps"]}, "fp16")
    assert not names_only["fallback"] and "no per-layer precision" in names_only["message"]
    # Both spellings of "Format/Datatype": DETAILED layouts and bare datatypes.
    assert layer_datatype("Half") == "fp16" and layer_datatype({"Format/Datatype": "Float"}) == "fp32"
    assert layer_datatype(fp32) == "fp32" and layer_datatype(half) == "fp16" and layer_datatype(int8) == "int8"
    assert layer_datatype("Int8") == "int8" and layer_datatype("BFloat16") == "bf16" and layer_datatype("Int32") == "int32"
    assert layer_datatype("Broadcast") == "unknown"


def test_timing_cache_round_trip(tmp_path):
    path = tmp_path / "cache" / "tokenpose.timing.cache"
    assert read_timing_cache(path) == b"" and read_timing_cache(None) == b""
    write_timing_cache(path, b"\x01\x02cache")
    assert read_timing_cache(path) == b"\x01\x02cache"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_tensorrt_error_carries_the_log():
    err = TensorRTError("build failed", ["[ERROR] layer x: unsupported", "[WARNING] y"])
    assert isinstance(err, TokenPoseError)
    assert str(err).splitlines()[0] == "build failed" and "unsupported" in str(err) and len(err.log) == 2


def test_engine_flag_without_tensorrt_is_a_clear_error(tmp_path):
    if tensorrt_unavailable_reason() is None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(ExportError, match="--engine was asked for but tensorrt is not installed"):
        export_model(ExportOptions(variant="t", out_dir=tmp_path, engine=True), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_int8_settings_validate_method():
    with pytest.raises(ValueError, match="calibration method"):
        Int8Settings(method="magic")


def test_int8_stem_model_runs_its_relus_as_the_clipping_of_the_next_quantize(tmp_path):
    """A stem backbone's Conv -> Q -> DQ -> ReLU -> Q chains: the file keeps them (the GPU model is
    derived from it), the CPU session folds each ReLU into the next Q (manifest `fused`), and the
    INT8-vs-FP32 check of the export ran with that fold."""
    from test_engines import TINY

    from tokenpose.engines.base import load_engine
    from tokenpose.export.fusion import apply_fusions
    from tokenpose.export.onnx import runtime_kernels

    cfg = dataclasses.replace(TINY, name="tiny-stem", backbone="stem", patch_hw=(4, 3))
    summary = export_model(ExportOptions(variant=cfg, out_dir=tmp_path, int8=True, calib_data=COCO_JSON, calib_size=8,
                                         engine=False, verify_batches=(1,)), log=lambda _m: None)
    path = next(a.path for a in summary.artifacts if a.precision == "int8")
    m = read_manifest(path)
    folded = m.onnxruntime["fused"]["quantized_relu"]
    model = onnx.load(str(path))
    relus = sum(n.op_type == "Relu" for n in model.graph.node)
    assert folded >= 2 and relus >= folded  # the file keeps every ReLU
    assert m.verification["vs_fp32"]["oks_mean"] > 0.5
    plain, _ = apply_fusions(model, ["attention", "split_matmul"])
    fused, _ = apply_fusions(model)
    dq_plain, dq_fused = (runtime_kernels(p).get("DequantizeLinear", 0) for p in (plain, fused))
    assert dq_fused <= dq_plain - folded, (dq_plain, dq_fused)  # no float requantization left behind
    engine = load_engine(path, threads=1)
    assert engine.session_settings["fused"]["quantized_relu"] == folded
