"""The Triton model repository written by `tokenpose-export --triton`, parsed with Triton's own schema."""

from __future__ import annotations

import dataclasses
import hashlib

import onnx
import pytest
from google.protobuf import text_format
from test_engines import build_artifacts

from tokenpose.errors import TokenPoseError
from tokenpose.export.triton import triton_config, write_triton_model
from tokenpose.manifest import read_manifest

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_triton_repository_matches_the_onnx_model(tmp_path):
    onnx_path = build_artifacts(tmp_path)["onnx"]
    manifest = read_manifest(onnx_path)
    folder = write_triton_model(onnx_path, manifest, tmp_path / "triton", preferred=(8, 2, 64, 0), instances=2)
    assert folder.name == "tokenpose_tiny-t_fp32"
    config = _parse((folder / "config.pbtxt").read_text())
    assert config.name == folder.name and config.backend == "onnxruntime"
    assert config.max_batch_size == manifest.batch["max"]
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    (inp,), (out,) = config.input, config.output
    assert inp.name == graph.input[0].name and out.name == graph.output[0].name
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert list(inp.dims) == dims[1:] == [3, *manifest.input_hw]
    out_dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert list(out.dims) == out_dims[1:] == [manifest.num_joints, *manifest.heatmap_hw]
    assert model_config_pb2.DataType.Name(inp.data_type) == "TYPE_FP32"
    # preferred sizes outside 1..max are dropped, the rest sorted
    assert list(config.dynamic_batching.preferred_batch_size) == sorted(
        b for b in (8, 2, 64) if b <= manifest.batch["max"])
    assert config.instance_group[0].count == 2
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    same = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert hashlib.sha256((folder / "1" / "model.onnx").read_bytes()).hexdigest() == same
    assert (folder / "manifest.json").read_text() == onnx_path.with_name(onnx_path.name + ".json").read_text()


def test_tensorrt_engines_become_plans_and_bad_settings_are_one_line(tmp_path):
    onnx_path = build_artifacts(tmp_path)["onnx"]
    manifest = dataclasses.replace(read_manifest(onnx_path), format="tensorrt", precision="fp16",
                                   artifact="tokenpose_tiny-t_fp16.engine")
    config = _parse(triton_config(manifest, "TYPE_FP32", "TYPE_FP32", preferred=(1,)))
    assert config.platform == "tensorrt_plan" and config.name == "tokenpose_tiny-t_fp16_trt"
    with pytest.raises(TokenPoseError, match="no preferred batch size"):
        triton_config(manifest, "TYPE_FP32", "TYPE_FP32", preferred=(10_000,))
    with pytest.raises(TokenPoseError, match="instance kind"):
        triton_config(manifest, "TYPE_FP32", "TYPE_FP32", preferred=(1,), kind="GPU")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:100])
    manifest = dataclasses.replace(manifest, format="onnx")
    with pytest.raises(TokenPoseError, match="cannot read ONNX model"):
        write_triton_model(truncated, manifest, tmp_path / "triton", preferred=(1,))
