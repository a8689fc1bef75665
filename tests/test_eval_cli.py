"""`tokenpose eval`, `validate` and `predict` through typer's CliRunner, on coco_mini / mpii_mini."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_engines import TINY, build_artifacts, peaked_model
from test_predictor import coco_pycocotools
from typer.testing import CliRunner

from tokenpose.cli.main import app
from tokenpose.models.checkpoints import save_weights

FIXTURES = Path(__file__).parent / "fixtures"
COCO_MINI = FIXTURES / "coco_mini"
MPII_MINI = FIXTURES / "mpii_mini"
DETS = COCO_MINI / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person_subset.json"
TINY_MPII = dataclasses.replace(TINY, name="tiny-mpii", input_hw=(256, 256), heatmap_hw=(64, 64), patch_hw=(16, 16),
                                dataset="mpii")

runner = CliRunner()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return build_artifacts(tmp_path_factory.mktemp("cli"))


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], result.output


def test_eval_coco_json_and_results_file(artifacts, tmp_path):
    res = run("eval", "--engine", artifacts["onnx"], "--data-root", COCO_MINI, "--max-images", 5,
              "--results", tmp_path / "r.json", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["dataset"] == "coco" and report["engine"]["backend"] == "onnxruntime"
    assert report["num_images"] == 5 and report["boxes"] == "ground truth"
    direct = coco_pycocotools(json.loads((tmp_path / "r.json").read_text()))
    assert report["metrics"]["AP"] == pytest.approx(direct[0], abs=1e-12)


def test_eval_table_with_detections_and_flip(artifacts):
    res = run("eval", "-e", artifacts["pth"], "-d", COCO_MINI, "--det-file", DETS, "--flip", "--max-images", 1)
    assert res.exit_code == 0, res.output
    # rich wraps the table title at the table's width, and the title holds the boxes file's full path:
    # where it breaks depends on where the repository is checked out, so compare with the wraps undone.
    text = " ".join(res.output.split())
    assert "AP50" in text and "flip test" in text and "1 images" in text


def test_validate_onnx_against_pth(artifacts, tmp_path):
    res = run("validate", "--engine", artifacts["onnx"], "--against", artifacts["pth"], "-d", COCO_MINI,
              "--max-images", 4, "--out", tmp_path / "v.json", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report == json.loads((tmp_path / "v.json").read_text())
    assert report["heatmap_max_abs"] < 1e-5
    assert report["kpt_max_px"] < 0.01
    assert report["oks_min"] > 0.9999
    assert report["test_metrics"]["AP"] == pytest.approx(report["reference_metrics"]["AP"], abs=1e-9)
    table = run("validate", "-e", artifacts["onnx"], "-a", artifacts["pth"], "-d", COCO_MINI, "--max-images", 2)
    assert table.exit_code == 0 and "max |heatmap diff|" in table.output


def test_eval_errors_are_one_line(artifacts, tmp_path):
    one_line_error(run("eval", "-e", tmp_path / "none.onnx", "-d", COCO_MINI), "engine file not found")
    lone = tmp_path / "lone.onnx"
    shutil.copy(artifacts["onnx"], lone)
    one_line_error(run("eval", "-e", lone, "-d", COCO_MINI), "no manifest for")
    one_line_error(run("eval", "-e", artifacts["pth"], "-d", tmp_path), "no COCO annotations under")
    one_line_error(run("eval", "-e", artifacts["pth"], "-d", COCO_MINI, "--device", "tensorrt"), "device must be")
    one_line_error(run("eval", "-e", artifacts["onnx"], "-d", COCO_MINI, "--precision", "int8"), "is a fp32 model")


def test_eval_mpii_needs_head_boxes(tmp_path):
    save_weights(peaked_model(TINY_MPII), tmp_path / "mpii.pth", variant={"model_config": dataclasses.asdict(TINY_MPII)})
    one_line_error(run("eval", "-e", tmp_path / "mpii.pth", "-d", MPII_MINI), "MPII PCKh needs head boxes")
    res = run("eval", "-e", tmp_path / "mpii.pth", "-d", MPII_MINI, "--head-size-standin", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["dataset"] == "mpii" and "PCKh@0.5 Mean" in report["metrics"]
    assert any("stand-in" in n for n in report["notes"])
    n = report["num_persons"]
    boxes = np.tile(np.array([[[0.0, 0.0], [60.0, 80.0]]]), (n, 1, 1))
    np.save(tmp_path / "heads.npy", boxes)
    res = run("eval", "-e", tmp_path / "mpii.pth", "-d", MPII_MINI, "--head-boxes", tmp_path / "heads.npy", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["notes"] == []


def test_predict_image_with_boxes(artifacts, tmp_path):
    image = COCO_MINI / "images" / "000000000785.jpg"
    res = run("predict", image, "--engine", artifacts["onnx"], "--boxes", DETS, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    with open(DETS) as f:
        expected = sum(1 for d in json.load(f) if d["image_id"] == 785)
    assert len(results) == expected >= 1
    assert {r["image_id"] for r in results} == {785} and len(results[0]["keypoints"]) == 51
    drawn = cv2.imread(str(tmp_path / "out" / image.name))
    assert drawn is not None and drawn.shape == (425, 640, 3)
    assert not np.array_equal(drawn, cv2.imread(str(image)))


def test_predict_any_picture_without_boxes(artifacts, tmp_path):
    picture = tmp_path / "holiday.png"
    cv2.imwrite(str(picture), cv2.imread(str(COCO_MINI / "images" / "000000005802.jpg")))
    res = run("predict", picture, "-e", artifacts["pth"], "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) >= 1 and results[0]["file_name"] == "holiday.png"
    assert (tmp_path / "out" / "holiday.png").is_file()


def test_predict_folder_skips_unreadable_images(artifacts, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("000000000785.jpg", "000000000790.jpg"):
        shutil.copy(COCO_MINI / "images" / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"")
    res = run("predict", folder, "-e", artifacts["pth"], "--boxes", DETS, "-o", tmp_path / "out", "--no-draw")
    assert res.exit_code == 0, res.output
    assert "skipped image file is empty" in res.output and "2 images" in res.output
    assert not (tmp_path / "out" / "000000000785.jpg").exists()


def write_clip(path, frames: int):
    """A short MJPG video of a real coco_mini image repeated `frames` times."""
    frame = cv2.resize(cv2.imread(str(COCO_MINI / "images" / "000000000785.jpg")), (320, 212))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 212))
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path


def test_predict_video(artifacts, tmp_path):
    video = write_clip(tmp_path / "clip.avi", frames=3)
    res = run("predict", video, "-e", artifacts["pth"], "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "3 frames" in res.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted({r["image_id"] for r in results}) == [0, 1, 2]
    assert (tmp_path / "out" / "clip.mp4").stat().st_size > 0


def test_predict_errors_are_one_line(artifacts, tmp_path):
    one_line_error(run("predict", tmp_path / "missing.jpg", "-e", artifacts["pth"]), "input not found")
    (tmp_path / "empty.jpg").write_bytes(b"")
    one_line_error(run("predict", tmp_path / "empty.jpg", "-e", artifacts["pth"], "-o", tmp_path / "o"),
                   "image file is empty")
    (tmp_path / "bad.json").write_text("{not json")
    image = COCO_MINI / "images" / "000000000785.jpg"
    one_line_error(run("predict", image, "-e", artifacts["pth"], "--boxes", tmp_path / "bad.json"), "not valid JSON")


def test_predict_refuses_to_write_into_the_input_folder(artifacts, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    shutil.copy(COCO_MINI / "images" / "000000000785.jpg", folder / "000000000785.jpg")
    before = (folder / "000000000785.jpg").read_bytes()
    one_line_error(run("predict", folder, "-e", artifacts["pth"], "--boxes", DETS, "-o", folder), "is the input folder")
    one_line_error(run("predict", folder / "000000000785.jpg", "-e", artifacts["pth"], "--boxes", DETS, "-o", folder),
                   "would overwrite the input")
    assert (folder / "000000000785.jpg").read_bytes() == before and not (folder / "results.json").exists()


def test_predict_matches_detections_by_file_name_or_numeric_name(artifacts, tmp_path):
    from tokenpose.predict import BoxSource
    from tokenpose.errors import TokenPoseError

    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ("000000000785.jpg", "000000000790.jpg"):
        shutil.copy(COCO_MINI / "images" / name, folder / name)
    shutil.copy(COCO_MINI / "images" / "000000000790.jpg", folder / "aaa_holiday.jpg")  # sorts first: index 0
    by_id = tmp_path / "by_id.json"
    by_id.write_text(json.dumps([{"image_id": 0, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.9},
                                 {"image_id": 785, "category_id": 1, "bbox": [277, 45, 225, 333], "score": 0.8}]))
    source = BoxSource(by_id)
    boxes, scores = source.boxes("000000000785.jpg", 785)
    assert boxes.tolist() == [[277, 45, 225, 333]] and scores.tolist() == [0.8]
    with pytest.raises(TokenPoseError, match="'aaa_holiday.jpg' has no numeric file name"):
        source.boxes("aaa_holiday.jpg", None)  # never image 0's boxes through its folder index
    one_line_error(run("predict", folder, "-e", artifacts["pth"], "--boxes", by_id, "-o", tmp_path / "o1", "--no-draw"),
                   "has no numeric file name")

    by_name = tmp_path / "by_name.json"
    by_name.write_text(json.dumps([{"image_id": 0, "file_name": "aaa_holiday.jpg", "category_id": 1,
                                    "bbox": [50, 50, 200, 300], "score": 0.7},
                                   {"image_id": 785, "file_name": "000000000785.jpg", "category_id": 1,
                                    "bbox": [277, 45, 225, 333], "score": 0.8}]))
    res = run("predict", folder, "-e", artifacts["pth"], "--boxes", by_name, "-o", tmp_path / "o2", "--no-draw")
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "o2" / "results.json").read_text())
    assert sorted((r["file_name"], r["bbox"]) for r in results) == [
        ("000000000785.jpg", [277, 45, 225, 333]), ("aaa_holiday.jpg", [50, 50, 200, 300])]


def test_predict_queue_is_bounded_by_images_too(artifacts, tmp_path):
    from tokenpose.predict import BoxSource, Run
    from tokenpose.engines import PosePredictor, load_engine

    image = cv2.imread(str(COCO_MINI / "images" / "000000000785.jpg"))
    names = [f"{i:012d}.jpg" for i in range(1, 8)]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({names[0]: [[277, 45, 225, 333, 0.9]], names[4]: [[100, 50, 80, 160]]}))
    predictor = PosePredictor(load_engine(artifacts["pth"]), batch_size=3)
    run_ = Run(predictor, BoxSource(boxes), tmp_path, 0.3, 0.0, draw=True)
    drawn, most = [], 0
    for i, name in enumerate(names):
        run_.add(name, i + 1, image, lambda n, _img: drawn.append(n), box_id=i + 1)
        most = max(most, len(run_.pending))
    run_.flush(lambda n, _img: drawn.append(n))
    assert most <= 3  # 1 box in 7 images never fills a batch of boxes: the image count flushes
    assert drawn == names  # in order, boxless images included
    assert [r["file_name"] for r in run_.results] == [names[0], names[4]]


def test_predict_video_is_renamed_into_place(artifacts, tmp_path):
    video = write_clip(tmp_path / "clip.avi", frames=2)
    res = run("predict", video, "-e", artifacts["pth"], "-o", tmp_path / "out", "--batch-size", 1)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.mp4", "results.json"]
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    cap.release()
