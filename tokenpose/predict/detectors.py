"""Bring-your-own ONNX person detectors: ultralytics YOLOv8/YOLO11, YOLOX and mmdeploy end2end exports.

    detector = load_detector("yolov8n.onnx")          # format and input size read from the graph
    boxes = detector.detect([frame_a, frame_b])       # [(N, 5) x, y, w, h, score in image pixels, ...]

No detector weights ship with tokenpose: detection quality is entirely that of the user's weights.
The formats (`FORMATS`), recognised from the graph's outputs (`sniff_format`), each with the input
its exporter expects (`PREPROCESS`):

* "yolov8": one output (B, 4 + C, A) = cx, cy, w, h (input pixels) and C class scores after the
  sigmoid, for A anchors (ultralytics YOLOv8 / YOLO11 `export(format="onnx")`); the input is
  letterboxed with the padding split on both sides, RGB, scaled to 0..1.
* "yolox": one output (B, A, 5 + C) = cx, cy, w, h, objectness, C class scores, decoded in the
  graph (the graph holds the Exp of the size decoding); "yolox-raw": the same before the grid
  decoding (YOLOX's `export_onnx.py` default): xy are offsets in grid cells and wh logarithms, at
  strides 8, 16 and 32. The input is resized into the top-left corner, BGR, 0..255.
* "mmdeploy": `dets` (B, N, 5) = x1, y1, x2, y2, score and `labels` (B, N), NMS already in the
  graph (mmdeploy's end2end RTMDet or YOLOX). Top-left, BGR, normalised with RTMDet's mean/std
  unless an mmdeploy `pipeline.json` beside the model says otherwise.

Only the person class (`person_class`, COCO's 0) is kept; a box's score is that class's score
(times the objectness for YOLOX); scores below `score_threshold` are dropped, then overlapping boxes
by OpenCV's NMS (`cv2.dnn.NMSBoxes`), and the rest are mapped back through the letterbox to image
pixels (`Letterbox.to_image`) and clipped to the image.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tokenpose.errors import TokenPoseError
from tokenpose.predict.letterbox import Letterbox, letterbox

FORMATS = ("yolov8", "yolox", "yolox-raw", "mmdeploy")
YOLOX_STRIDES = (8, 16, 32)
RTMDET_MEAN, RTMDET_STD = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)  # BGR order, mmdet's config
_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class Preprocess:
    """How a format's exporter fed its model: letterbox padding `centred` (both sides) or at the
    bottom/right; colour order; input = (pixel - mean) / std per channel, in that colour order."""

    centred: bool
    rgb: bool
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_value: int = 114


PREPROCESS = {
    "yolov8": Preprocess(centred=True, rgb=True, std=(255.0, 255.0, 255.0)),
    "yolox": Preprocess(centred=False, rgb=False),
    "yolox-raw": Preprocess(centred=False, rgb=False),
    "mmdeploy": Preprocess(centred=False, rgb=False, mean=RTMDET_MEAN, std=RTMDET_STD),
}


@dataclass(frozen=True)
class DetectorSpec:
    """What `load_detector` opens (picklable, so Ray tasks and Serve replicas load their own copy).

    format: one of FORMATS, None to read it from the graph; size: (H, W) input pixels, None to read
    it from the graph; person_class: the class index of "person"; score_threshold: lowest kept
    score; nms_iou: IoU above which the weaker of two boxes is dropped; max_batch: images per call
    when the graph's batch axis is dynamic; max_detections: most boxes kept per image."""

    path: Path
    format: str | None = None
    size: tuple[int, int] | None = None
    person_class: int = 0
    score_threshold: float = 0.3
    nms_iou: float = 0.45
    max_batch: int = 8
    max_detections: int = 100

    def load(self) -> OnnxDetector:
        return OnnxDetector(self)


def load_detector(path: str | Path, format: str | None = None, size: int | tuple[int, int] | None = None,
                  **options) -> OnnxDetector:
    """An ONNX person detector (see the module docstring); `size` is one side of a square input or
    (H, W); other options are `DetectorSpec`'s. Raises TokenPoseError naming what does not fit."""
    if isinstance(size, int):
        size = (size, size)
    return DetectorSpec(Path(path), format, None if size is None else tuple(size), **options).load()


def _shape(value) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in value.shape) + ")"


def describe_graph(session) -> str:
    """`inputs: images (1, 3, 640, 640); outputs: output0 (1, 84, 8400)`, for error messages."""
    ins = ", ".join(f"{v.name} {_shape(v)}" for v in session.get_inputs())
    outs = ", ".join(f"{v.name} {_shape(v)}" for v in session.get_outputs())
    return f"inputs: {ins}; outputs: {outs}"


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def sniff_format(session, has_exp: bool) -> str | None:
    """The format (FORMATS) a session's outputs have, or None. has_exp: the graph holds an Exp node
    (YOLOX decoded in the graph; a raw YOLOX head has none)."""
    outs = session.get_outputs()
    if len(outs) == 2:
        ranks = sorted(len(o.shape) for o in outs)
        dets = next((o for o in outs if len(o.shape) == 3), None)
        if ranks == [2, 3] and _static(dets.shape[2]) == 5:
            return "mmdeploy"
        return None
    if len(outs) != 1 or len(outs[0].shape) != 3:
        return None
    _, a, b = (_static(d) for d in outs[0].shape)
    # The anchor axis is the long one (thousands), or the dynamic one when the other is fixed.
    if a is not None and (b is None or a < b):
        return "yolov8" if a >= 5 else None
    if b is not None and (a is None or b < a):
        return ("yolox" if has_exp else "yolox-raw") if b >= 6 else None
    return None


def _pipeline_preprocess(path: Path, base: Preprocess) -> Preprocess:
    """The Normalize step of an mmdeploy `pipeline.json` beside the model, when there is one."""
    pipeline = path.parent / "pipeline.json"
    if not pipeline.is_file():
        return base
    try:
        stack = [json.loads(pipeline.read_text())]
    except (OSError, json.JSONDecodeError) as exc:
        raise TokenPoseError(f"{pipeline}: not readable mmdeploy pipeline json: {exc}") from None
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "Normalize":
                return dataclasses.replace(base, mean=tuple(node["mean"]), std=tuple(node["std"]),
                                           rgb=bool(node.get("to_rgb", False)))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return base


class OnnxDetector:
    """A person detector over an ONNX Runtime session (CPU). `detect(images)` -> per image (N, 5)
    float64 rows x, y, w, h, score in that image's pixels, best first. Attributes: format,
    input_hw (H, W), num_classes (None when the graph does not tell), spec."""

    def __init__(self, spec: DetectorSpec) -> None:
        import onnx
        import onnxruntime as ort

        self.spec = spec
        path = spec.path
        if not path.is_file():
            raise FileNotFoundError(f"detector not found: {path}")
        try:
            model = onnx.load(str(path), load_external_data=False)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - protobuf and ORT raise many types for a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TokenPoseError(f"cannot read ONNX detector {path}: {first}") from None
        graph = describe_graph(self.session)
        sniffed = sniff_format(self.session, any(n.op_type == "Exp" for n in model.graph.node))
        self.format = spec.format or sniffed
        if self.format not in FORMATS:
            what = f"--detector-format {spec.format!r} is not one of" if spec.format else "in none of the formats"
            raise TokenPoseError(f"detector {path} is {what} {', '.join(FORMATS)}; found {graph}")
        inp = self.session.get_inputs()[0]
        if len(self.session.get_inputs()) != 1 or len(inp.shape) != 4 or inp.type not in _TYPES:
            raise TokenPoseError(f"detector {path}: expected one float (B, 3, H, W) image input; found {graph}")
        self.input_name, self.dtype = inp.name, _TYPES[inp.type]
        hw = (_static(inp.shape[2]), _static(inp.shape[3]))
        self.input_hw = spec.size or (hw if None not in hw else None)
        if self.input_hw is None:
            raise TokenPoseError(f"detector {path} has a dynamic input size ({graph}); pass --detector-size")
        if any(fixed is not None and fixed != given for fixed, given in zip(hw, self.input_hw)):
            raise TokenPoseError(f"detector {path}: --detector-size {self.input_hw[1]}x{self.input_hw[0]} does not "
                                 f"fit the graph's fixed input ({graph})")
        self.fixed_batch = _static(inp.shape[0])
        self.batch_frames = spec.max_batch  # frames a predict run queues for one detect() call
        self.num_classes = self._num_classes()
        if self.num_classes is not None and not 0 <= spec.person_class < self.num_classes:
            raise TokenPoseError(f"detector {path} ({self.format}) has {self.num_classes} classes: --detector-class "
                                 f"{spec.person_class} is impossible (0..{self.num_classes - 1}); found {graph}")
        self.preprocess = PREPROCESS[self.format]
        if self.format == "mmdeploy":
            self.preprocess = _pipeline_preprocess(path, self.preprocess)

    def __reduce__(self):
        return DetectorSpec.load, (self.spec,)

    def _num_classes(self) -> int | None:
        outs = self.session.get_outputs()
        if self.format == "yolov8" and len(outs) == 1 and len(outs[0].shape) == 3:
            return None if _static(outs[0].shape[1]) is None else outs[0].shape[1] - 4
        if self.format.startswith("yolox") and len(outs) == 1 and len(outs[0].shape) == 3:
            return None if _static(outs[0].shape[2]) is None else outs[0].shape[2] - 5
        return None

    def inputs(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Letterbox]]:
        """BGR uint8 images -> the detector's input batch (B, 3, H, W) and each image's letterbox."""
        p = self.preprocess
        canvases, boxes = [], []
        for image in images:
            canvas, box = letterbox(image, self.input_hw, centred=p.centred, pad_value=p.pad_value)
            canvases.append(canvas[..., ::-1] if p.rgb else canvas)
            boxes.append(box)
        batch = (np.stack(canvases).astype(np.float32) - np.float32(p.mean)) / np.float32(p.std)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(self.dtype, copy=False), boxes

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """One or more session calls over `batch`: each output with batch axis len(batch)."""
        n = len(batch)
        step = self.fixed_batch or self.spec.max_batch
        parts = []
        for start in range(0, n, step):
            chunk = batch[start:start + step]
            if self.fixed_batch is not None and len(chunk) < self.fixed_batch:  # a fixed batch is padded
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - len(chunk), *chunk.shape[1:]),
                                                        chunk.dtype)])
            outs = self.session.run(None, {self.input_name: chunk})
            parts.append([np.asarray(o)[:min(step, n - start)] for o in outs])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    def detect(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """BGR uint8 (H, W, 3) images -> per image (N, 5) float64 x, y, w, h, score (image pixels),
        best first; every image of the list goes through the session in batches."""
        if len(images) == 0:
            return []
        batch, boxes = self.inputs(images)
        outputs = self._run(batch)
        found = []
        for i, (image, box) in enumerate(zip(images, boxes)):
            xyxy, scores = self.decode([o[i] for o in outputs])
            found.append(self._to_image(xyxy, scores, box, image.shape[:2]))
        return found

    def decode(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One image's outputs -> person boxes (M, 4) x1, y1, x2, y2 in input pixels and scores (M,),
        thresholded and NMS-ed, best first."""
        cls, thr = self.spec.person_class, self.spec.score_threshold
        if self.format == "mmdeploy":
            dets, labels = sorted(outputs, key=lambda o: o.ndim, reverse=True)
            keep = (labels.astype(np.int64) == cls) & (dets[:, 4] >= thr)
            dets = dets[keep].astype(np.float64)
            order = np.argsort(-dets[:, 4], kind="stable")
            return dets[order, :4], dets[order, 4]
        pred = outputs[0].astype(np.float64)
        if self.format == "yolov8":
            pred = pred.T  # (A, 4 + C)
            self._check_class(pred.shape[1] - 4)
            scores = pred[:, 4 + cls]
        else:
            self._check_class(pred.shape[1] - 5)
            if self.format == "yolox-raw":
                pred = self._grid_decode(pred)
            scores = pred[:, 4] * pred[:, 5 + cls]
        keep = scores >= thr
        cxcywh, scores = pred[keep, :4], scores[keep]
        xywh = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, 2:]], axis=1)
        picked = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), thr, self.spec.nms_iou)
        picked = np.asarray(picked, dtype=np.int64).reshape(-1)
        xywh, scores = xywh[picked], scores[picked]
        order = np.argsort(-scores, kind="stable")
        xywh, scores = xywh[order], scores[order]
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), scores

    def _check_class(self, num_classes: int) -> None:
        if not 0 <= self.spec.person_class < num_classes:
            raise TokenPoseError(f"detector {self.spec.path} ({self.format}) gives {num_classes} classes: "
                                 f"--detector-class {self.spec.person_class} is impossible")

    def _grid_decode(self, pred: np.ndarray) -> np.ndarray:
        """YOLOX's grid decoding, for graphs exported without it: xy = (offset + cell) * stride,
        wh = exp(log size) * stride, cells row-major per stride 8, 16, 32."""
        h, w = self.input_hw
        grids, strides = [], []
        for s in YOLOX_STRIDES:
            ys, xs = np.meshgrid(np.arange(h // s), np.arange(w // s), indexing="ij")
            grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
            strides.append(np.full((grids[-1].shape[0], 1), s))
        grid, stride = np.concatenate(grids), np.concatenate(strides)
        if len(grid) != len(pred):
            raise TokenPoseError(f"detector {self.spec.path} (yolox-raw) has {len(pred)} anchors; a {w}x{h} input at "
                                 f"strides {YOLOX_STRIDES} has {len(grid)}: check --detector-size or --detector-format")
        out = pred.copy()
        out[:, :2] = (pred[:, :2] + grid) * stride
        out[:, 2:4] = np.exp(pred[:, 2:4]) * stride
        return out

    def _to_image(self, xyxy: np.ndarray, scores: np.ndarray, box: Letterbox, hw: tuple[int, int]) -> np.ndarray:
        """Input-pixel boxes -> (N, 5) x, y, w, h, score rows in image pixels, clipped, without empty ones."""
        h, w = hw
        xyxy = box.to_image(xyxy)
        xyxy = np.clip(xyxy, 0, [w, h, w, h])
        wh = xyxy[:, 2:] - xyxy[:, :2]
        keep = (wh > 0).all(axis=1)
        rows = np.concatenate([xyxy[keep, :2], wh[keep], scores[keep, None]], axis=1)
        return rows[: self.spec.max_detections]
