"""Bring-your-own ONNX person detectors (issue 15): format detection, letterbox, decoding, NMS, person filter.

The graphs are built with onnx.helper and give known outputs (a constant tiled over the batch), so
every kept box and its image-pixel coordinates are known exactly; they run in real ONNX Runtime
sessions. `tests/fixtures/detectors/yolo_tiny.onnx` is a real ultralytics export (random weights).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_run import COCO_IMAGES, FIXTURES
from onnx import TensorProto, helper

from tokenpose.data.transforms import read_image
from tokenpose.errors import TokenPoseError
from tokenpose.predict.detectors import YOLOX_STRIDES, load_detector
from tokenpose.predict.letterbox import letterbox

YOLO_TINY = FIXTURES / "detectors" / "yolo_tiny.onnx"


def constant_graph(path: Path, outputs: dict[str, np.ndarray], size: int | str = 320, batch: int | str = "B",
                   exp: bool = False) -> Path:
    """An ONNX model `images (batch, 3, size, size)` -> each of `outputs` (its leading axis of 1 tiled
    to the batch); with `exp`, an Exp node sits on the path (as in a YOLOX graph decoded in the graph)."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "axes12"], ["m3"]),
        helper.make_node("Mul", ["m3", "zero"], ["z"]),
    ]
    if exp:
        nodes += [helper.make_node("Exp", ["z"], ["e"]), helper.make_node("Sub", ["e", "one"], ["z0"])]
    else:
        nodes += [helper.make_node("Identity", ["z"], ["z0"])]
    inits = [helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    outs = []
    for name, value in outputs.items():
        value = np.asarray(value)
        inits.append(helper.make_tensor(f"{name}_c", TensorProto.FLOAT, value.shape, value.astype(np.float32).ravel()))
        z = "z0" if value.ndim == 3 else f"{name}_z"
        if value.ndim == 2:
            nodes.append(helper.make_node("Squeeze", ["z0", "axis2"], [z]))
        if value.dtype.kind == "i":
            nodes += [helper.make_node("Add", [f"{name}_c", z], [f"{name}_f"]),
                      helper.make_node("Cast", [f"{name}_f"], [name], to=TensorProto.INT64)]
            elem = TensorProto.INT64
        else:
            nodes.append(helper.make_node("Add", [f"{name}_c", z], [name]))
            elem = TensorProto.FLOAT
        outs.append(helper.make_tensor_value_info(name, elem, [batch, *value.shape[1:]]))
    inits.append(helper.make_tensor("axis2", TensorProto.INT64, [1], [2]))
    graph = helper.make_graph(nodes, "detector", [helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, [batch, 3, size, size])], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


IMAGE_HW = (480, 640)  # letterboxed into 320x320: scale 0.5, 40 px of padding above (centred) or none (top-left)

# Boxes in input pixels (cx, cy, w, h), person score, other class's score.
ANCHORS = np.array([
    [100, 100, 40, 80, 0.90, 0.10],  # person A
    [102, 101, 40, 80, 0.80, 0.05],  # overlaps A (IoU 0.9): removed by NMS
    [200, 60, 30, 30, 0.05, 0.95],  # another class
    [40, 200, 20, 50, 0.20, 0.00],  # person below the threshold 0.3
    [250, 150, 60, 100, 0.60, 0.10],  # person E
    *[[160, 160, 10, 10, 0.0, 0.0]] * 15,  # empty anchors: in a real graph the anchor axis is the long one
])


def expected_people(pad_top: float) -> np.ndarray:
    """A and E in image pixels (x, y, w, h, score): input = image * 0.5 + (0, pad_top)."""
    rows = []
    for cx, cy, w, h, score in ANCHORS[[0, 4], :5]:
        rows.append([(cx - w / 2) * 2, (cy - h / 2 - pad_top) * 2, w * 2, h * 2, score])
    return np.array(rows)


def yolov8_output() -> np.ndarray:
    return ANCHORS.T[None].astype(np.float32)  # (1, 4 + 2, 20)


def yolox_output() -> np.ndarray:
    obj = np.array([1.0, 1.0, 1.0, 1.0, 0.5] + [1.0] * 15)  # E's score is obj * class = 0.5 * 1.2 -> 0.6
    cls = ANCHORS[:, 4:].copy()
    cls[4, 0] = 1.2
    return np.concatenate([ANCHORS[:, :4], obj[:, None], cls], axis=1)[None].astype(np.float32)  # (1, 20, 5 + 2)


def blank_images(n: int = 1) -> list[np.ndarray]:
    return [np.zeros((*IMAGE_HW, 3), np.uint8) for _ in range(n)]


def test_yolov8_format_is_recognised_and_decoded_exactly(tmp_path):
    det = load_detector(constant_graph(tmp_path / "v8.onnx", {"output0": yolov8_output()}))
    assert (det.format, det.input_hw, det.num_classes) == ("yolov8", (320, 320), 2)
    (found,) = det.detect(blank_images())
    np.testing.assert_allclose(found, expected_people(pad_top=40), atol=1e-4)


def test_person_class_filter_and_impossible_class(tmp_path):
    path = constant_graph(tmp_path / "v8.onnx", {"output0": yolov8_output()})
    (other,) = load_detector(path, person_class=1).detect(blank_images())
    np.testing.assert_allclose(other[:, 4], [0.95], atol=1e-6)  # only the other class's box
    with pytest.raises(TokenPoseError, match=r"has 2 classes: --detector-class 2 is impossible \(0..1\)"):
        load_detector(path, person_class=2)


def test_nms_threshold_is_honoured(tmp_path):
    path = constant_graph(tmp_path / "v8.onnx", {"output0": yolov8_output()})
    (kept,) = load_detector(path, nms_iou=0.95).detect(blank_images())  # A and its twin overlap at IoU 0.9
    np.testing.assert_allclose(kept[:, 4], [0.9, 0.8, 0.6], atol=1e-6)


def test_yolox_decoded_in_graph(tmp_path):
    det = load_detector(constant_graph(tmp_path / "yolox.onnx", {"output": yolox_output()}, exp=True))
    assert det.format == "yolox" and det.num_classes == 2
    (found,) = det.detect(blank_images())
    np.testing.assert_allclose(found, expected_people(pad_top=0), atol=1e-4)  # YOLOX pads bottom/right


def test_yolox_raw_grid_decoding(tmp_path):
    size = 64
    anchors = sum((size // s) ** 2 for s in YOLOX_STRIDES)  # 64 + 16 + 4
    raw = np.zeros((1, anchors, 6), np.float32)
    row = (size // 8) ** 2 + 2 * (size // 16) + 1  # stride 16, cell x=1, y=2
    raw[0, row] = [0.5, 0.25, np.log(2.0), np.log(3.0), 0.9, 1.0]
    det = load_detector(constant_graph(tmp_path / "raw.onnx", {"output": raw}, size=size))
    assert det.format == "yolox-raw"
    (found,) = det.detect([np.zeros((64, 64, 3), np.uint8)])
    cx, cy, w, h = (1 + 0.5) * 16, (2 + 0.25) * 16, 2 * 16, 3 * 16
    np.testing.assert_allclose(found, [[cx - w / 2, cy - h / 2, w, h, 0.9]], atol=1e-4)
    with pytest.raises(TokenPoseError, match="--detector-size 96x96 does not fit the graph's fixed input"):
        load_detector(tmp_path / "raw.onnx", size=96)
    dynamic = constant_graph(tmp_path / "dyn.onnx", {"output": raw}, size="S")
    with pytest.raises(TokenPoseError, match="dynamic input size .*images \\(B, 3, S, S\\).*pass --detector-size"):
        load_detector(dynamic)
    np.testing.assert_allclose(load_detector(dynamic, size=64).detect([np.zeros((64, 64, 3), np.uint8)])[0],
                               found)
    with pytest.raises(TokenPoseError, match="has 84 anchors; a 96x96 input at strides"):
        load_detector(dynamic, size=96).detect([np.zeros((64, 64, 3), np.uint8)])


def test_mmdeploy_end2end(tmp_path):
    dets = np.array([[[80, 60, 120, 140, 0.9], [10, 10, 50, 50, 0.95], [220, 100, 280, 200, 0.6],
                      [0, 0, 5, 5, 0.1], [0, 0, 0, 0, 0.0]]], np.float32)
    labels = np.array([[0, 2, 0, 0, 0]], np.int64)
    det = load_detector(constant_graph(tmp_path / "end2end.onnx", {"dets": dets, "labels": labels}))
    assert det.format == "mmdeploy"
    (found,) = det.detect(blank_images())
    np.testing.assert_allclose(found, expected_people(pad_top=0), atol=1e-4)


def test_unknown_graph_is_one_line_naming_what_was_found(tmp_path):
    two = constant_graph(tmp_path / "two.onnx", {"a": np.zeros((1, 4, 4)), "b": np.zeros((1, 4, 4))})
    with pytest.raises(TokenPoseError) as err:
        load_detector(two)
    message = str(err.value)
    assert "\n" not in message and "in none of the formats" in message
    assert "inputs: images (B, 3, 320, 320); outputs: a (B, 4, 4), b (B, 4, 4)" in message
    path = constant_graph(tmp_path / "odd.onnx", {"logits": np.zeros((1, 3, 3))})  # no long anchor axis
    with pytest.raises(TokenPoseError, match="in none of the formats.*logits \\(B, 3, 3\\)"):
        load_detector(path)
    with pytest.raises(TokenPoseError, match="--detector-format 'ssd' is not one of"):
        load_detector(tmp_path / "odd.onnx", format="ssd")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[:50])
    with pytest.raises(TokenPoseError, match="cannot read ONNX detector .*cut.onnx"):
        load_detector(cut)


def test_frames_are_batched_for_fixed_and_dynamic_batch_axes(tmp_path):
    fixed = load_detector(constant_graph(tmp_path / "b1.onnx", {"output0": yolov8_output()}, batch=1))
    dynamic = load_detector(constant_graph(tmp_path / "bd.onnx", {"output0": yolov8_output()}), max_batch=2)
    assert fixed.fixed_batch == 1 and dynamic.fixed_batch is None
    images = blank_images(3) + [np.zeros((240, 320, 3), np.uint8)]  # the last: scale 1, 40 px padding
    for det in (fixed, dynamic):
        found = det.detect(images)
        assert len(found) == 4
        for f in found[:3]:
            np.testing.assert_allclose(f, expected_people(pad_top=40), atol=1e-4)
        assert found[3][0, 4] == pytest.approx(0.9, abs=1e-6)
        np.testing.assert_allclose(found[3][0, :4], [80, 20, 40, 80], atol=1e-4)
    assert fixed.detect([]) == []


def test_detector_pickles_as_its_spec(tmp_path):
    det = load_detector(constant_graph(tmp_path / "v8.onnx", {"output0": yolov8_output()}), score_threshold=0.5)
    copy = pickle.loads(pickle.dumps(det))
    assert copy.spec == det.spec and copy.format == "yolov8"
    np.testing.assert_allclose(copy.detect(blank_images())[0], det.detect(blank_images())[0])


@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize("hw", [(333, 517), (517, 333), (100, 100)])
def test_letterbox_inverse_is_sub_pixel(hw, centred):
    """A bright rectangle's centroid in the letterboxed input, mapped back, is the rectangle's centre."""
    image = np.zeros((*hw, 3), np.uint8)
    y1, x1, y2, x2 = hw[0] // 3, hw[1] // 4, hw[0] // 3 + 41, hw[1] // 4 + 57
    image[y1:y2, x1:x2] = 255
    canvas, box = letterbox(image, (320, 320), centred=centred)
    assert canvas.shape == (320, 320, 3)
    weight = canvas[..., 0].astype(np.float64) * (canvas[..., 0] != 114)
    ys, xs = np.mgrid[0:320, 0:320]
    centroid = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum() + 0.5  # pixel centres -> edges
    back = box.to_image(np.array([[*centroid, *centroid]]))[0, :2]
    np.testing.assert_allclose(back, [(x1 + x2) / 2, (y1 + y2) / 2], atol=0.25)
    corners = np.array([[x1, y1, x2, y2]], np.float64)
    np.testing.assert_allclose(box.to_image(box.to_input(corners)), corners, atol=1e-9)


@pytest.mark.skipif(not YOLO_TINY.is_file(), reason="fixture tests/fixtures/detectors/yolo_tiny.onnx not built")
def test_real_ultralytics_export_runs_through_the_pipeline():
    """A YOLOv8 built from its yaml with random weights (see tests/fixtures/detectors/README.md):
    format and shapes from the graph, and every box inside its image."""
    det = load_detector(YOLO_TINY, score_threshold=0.0)
    outs = det.session.get_outputs()
    assert det.format == "yolov8" and det.num_classes == outs[0].shape[1] - 4 == 80
    images = [read_image(p) for p in sorted(COCO_IMAGES.glob("*.jpg"))[:3]]
    found = det.detect(images)
    assert len(found) == 3
    for image, rows in zip(images, found):
        h, w = image.shape[:2]
        assert rows.shape[1] == 5 and len(rows) > 0
        assert (rows[:, 0] >= 0).all() and (rows[:, 1] >= 0).all()
        assert (rows[:, 0] + rows[:, 2] <= w + 1e-6).all() and (rows[:, 1] + rows[:, 3] <= h + 1e-6).all()
        assert (np.diff(rows[:, 4]) <= 0).all()
