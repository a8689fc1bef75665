"""The predict library (`tokenpose.predict`) in-process: box files, the box screen, truncated
images, the resumable results log and a resumed video run, on coco_mini with a real ONNX engine."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_engines import build_artifacts
from test_eval_cli import write_clip

from tokenpose.engines import PosePredictor, load_engine
from tokenpose.errors import TokenPoseError
from tokenpose.predict import (
    BoxSource,
    PredictJob,
    ResultsLog,
    done_items,
    draw_results,
    screen_boxes,
    truncation_problem,
)

IMAGES = Path(__file__).parent / "fixtures" / "coco_mini" / "images"
IMAGE = IMAGES / "000000000785.jpg"  # 640x425


@pytest.fixture(scope="module")
def onnx_engine(tmp_path_factory):
    return load_engine(build_artifacts(tmp_path_factory.mktemp("predict_library"))["onnx"])


def test_box_files_of_both_layouts_drop_non_finite_boxes_with_a_note(tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_text('{"a.jpg": [[1, 2, 30, 40], [5, 6, 7, 8, 0.2], [1, 2, 3, 4, NaN], [Infinity, 0, 1, 1, 0.9]]}')
    source = BoxSource(mapping, score_threshold=0.5)
    boxes, scores = source.boxes("a.jpg", None)
    assert boxes.tolist() == [[1, 2, 30, 40]] and scores.tolist() == [1.0]  # 0.2 is below the threshold
    assert [n.split(": ", 1)[1] for n in source.notes] == [
        "dropped box #2 of 'a.jpg' [1, 2, 3, 4]: its score is nan",
        "dropped box #3 of 'a.jpg' [inf, 0, 1, 1]: non-finite coordinates",
    ]
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": "785", "bbox": [1, 2, 3, 4], "score": 0.9},
                                {"image_id": 785, "bbox": [9, 9, 9, 9], "category_id": 2}]))
    assert BoxSource(dets).boxes("000000000785.jpg", 785)[0].tolist() == [[1, 2, 3, 4]]
    for bad, needle in [("[5]", "detection #0 must be an object"),
                        ('{"a.jpg": [[1, 2, 3]]}', "box #0 of 'a.jpg'"),
                        ('[{"file_name": 7, "bbox": [1, 2, 3, 4]}]', "'file_name' must be a string"),
                        ('[{"bbox": [1, 2, 3, 4]}]', "neither a 'file_name' nor an 'image_id'"),
                        ("7", "expected a list")]:
        dets.write_text(bad)
        with pytest.raises(TokenPoseError, match=needle):
            BoxSource(dets)


def test_screen_boxes_drops_unusable_and_huge_boxes_in_one_warning():
    boxes = np.array([[10, 10, 50, 80], [0, 0, 1e12, 1e12], [10, 10, 0, 5], [700, 10, 20, 20], [-500, 0, 2000, 400]])
    warned: list[str] = []
    kept, scores = screen_boxes(boxes, np.arange(5.0), (425, 640), "x.jpg", warned.append)
    assert kept.tolist() == [[10, 10, 50, 80], [-500, 0, 2000, 400]] and scores.tolist() == [0, 4]
    assert len(warned) == 1 and "x.jpg (640x425): dropped 3 box(es)" in warned[0]
    assert "#1 [0, 0, 1e+12, 1e+12], #2 [10, 10, 0, 5], #3 [700, 10, 20, 20]" in warned[0]
    screen_boxes(boxes[:1], np.ones(1), (425, 640), "x.jpg", warned.append)
    assert len(warned) == 1


def test_truncated_jpeg_and_png_are_found_by_their_missing_end(tmp_path):
    data = IMAGE.read_bytes()
    assert truncation_problem(IMAGE) is None
    (tmp_path / "padded.jpg").write_bytes(data + bytes(100))  # zero padding after the end marker is fine
    assert truncation_problem(tmp_path / "padded.jpg") is None
    (tmp_path / "cut.jpg").write_bytes(data[:-3000])
    assert "no JPEG end marker" in truncation_problem(tmp_path / "cut.jpg")
    assert cv2.imread(str(tmp_path / "cut.jpg")) is not None  # why the end is checked: it still decodes
    ok, png = cv2.imencode(".png", cv2.imread(str(IMAGE)))
    (tmp_path / "cut.png").write_bytes(png.tobytes()[:-20])
    assert "no PNG end chunk" in truncation_problem(tmp_path / "cut.png")


def test_results_log_survives_a_half_written_line_and_resumes(tmp_path):
    log = ResultsLog(tmp_path)
    log.append([("a.jpg", [{"file_name": "a.jpg", "score": 0.5}]), ("b.jpg", [])])
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"item": "c.jpg", "resu')  # a kill in the middle of a write
    assert done_items(tmp_path) == {"a.jpg": [{"file_name": "a.jpg", "score": 0.5}], "b.jpg": []}
    resumed = ResultsLog(tmp_path, resume=True)
    resumed.append([("c.jpg", [{"file_name": "c.jpg", "score": 0.7}])])
    assert resumed.write(["c.jpg", "b.jpg", "a.jpg"]) == tmp_path / "results.json"
    assert [r["file_name"] for r in json.loads((tmp_path / "results.json").read_text())] == ["c.jpg", "a.jpg"]
    assert not (tmp_path / "results.jsonl").exists()
    assert set(done_items(tmp_path)) == {"a.jpg", "c.jpg"}  # a finished run: read from results.json
    ResultsLog(tmp_path)  # a fresh run forgets the earlier results
    assert done_items(tmp_path) == {}
    (tmp_path / "results.jsonl").write_text('{"item": 1, "results": []}\nnot json\n{"item": 2, "results": []}\n')
    with pytest.raises(TokenPoseError, match="results.jsonl: line 2 is not a results-log entry"):
        done_items(tmp_path)


class CountingEngine:
    """A real engine that also counts the crops it is given."""

    def __init__(self, engine) -> None:
        self.inner = engine
        self.crops = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, images):
        self.crops += len(images)
        return self.inner(images)


def test_resumed_video_predicts_only_the_missing_frames_and_draws_all(onnx_engine, tmp_path):
    video = write_clip(tmp_path / "clip.avi", frames=3)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image_id": i, "bbox": [130, 20, 110, 170], "score": 0.9} for i in range(3)]))
    full = PredictJob(video, tmp_path / "full", boxes=BoxSource(boxes)).run(PosePredictor(onnx_engine, batch_size=1))
    assert (full.frames, full.kind, full.people, full.resumed) == (3, "frames", 3, 0)
    results = json.loads(full.results.read_text())

    out = tmp_path / "resumed"
    out.mkdir()
    (out / "results.jsonl").write_text("".join(
        json.dumps({"item": r["file_name"], "results": [r]}) + "\n" for r in results[:2]))
    (out / ".clip.999.partial.mp4").write_bytes(b"left by a killed run")
    counting = CountingEngine(onnx_engine)
    job = PredictJob(video, out, boxes=BoxSource(boxes), resume=True)
    summary = job.run(PosePredictor(counting, batch_size=1))
    assert counting.crops == 1 and summary.resumed == 2 and summary.frames == 3
    assert json.loads(summary.results.read_text()) == results
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4", "results.json"]
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()


def test_draw_results_survives_far_off_keypoints():
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    far = {"keypoints": [5e11, 5e11, 0.9] * 16 + [50.0, 50.0, 0.9], "bbox": [0, 0, 1e12, 1e12], "score": 0.5}
    out = draw_results(image, [far], keypoint_threshold=0.3)
    assert out[50, 50].any() and image.sum() == 0
    assert draw_results(image, [far], person_threshold=0.6).sum() == 0
    assert draw_results(image, []).shape == image.shape
