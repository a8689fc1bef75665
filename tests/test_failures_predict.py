"""`tokenpose predict` on bad input, through the real CLI in a subprocess (issue 12).

Each case checks the exit code, that stderr is one line without a traceback (or the warnings a
usable run prints), and what is left on disk. The interruption tests stop a real run over the
coco_mini images with SIGINT and SIGKILL, resume it and compare with an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_run import (COCO_ANN, COCO_IMAGES, ROOT, CliResult, assert_one_line_error, cli_env, run_cli,
                     sigint_as_usual)
from test_engines import build_artifacts

IMAGE = COCO_IMAGES / "000000000785.jpg"  # 640x425, one person
PERSON = [277, 45, 225, 333]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    return build_artifacts(tmp_path_factory.mktemp("failures_predict"))["onnx"]


@pytest.fixture(scope="module")
def gt_boxes(tmp_path_factory) -> Path:
    """{file name: [[x, y, w, h, 1.0], ...]}: every coco_mini image's ground-truth person boxes."""
    ann = json.loads(COCO_ANN.read_text())
    names = {im["id"]: im["file_name"] for im in ann["images"]}
    boxes: dict[str, list] = {}
    for a in ann["annotations"]:
        boxes.setdefault(names[a["image_id"]], []).append([*a["bbox"], 1.0])
    path = tmp_path_factory.mktemp("boxes") / "gt.json"
    path.write_text(json.dumps(boxes))
    return path


def predict(engine: Path, source: Path, *args) -> CliResult:
    return run_cli("predict", source, "-e", engine, *args)


def warnings_of(result: CliResult) -> list[str]:
    return [ln for ln in result.error_lines if ln.startswith("warning:")]


@pytest.mark.parametrize("content, needles", [
    ('{"000000000785.jpg": 5}', ["entry '000000000785.jpg'", "got 5"]),
    ('{"000000000785.jpg": [[null, 1, 2, 3]]}', ["box #0 of '000000000785.jpg'", "null at position 0"]),
    ('[{"image_id": 785, "bbox": 5, "score": 0.9}]', ["detection #0 'bbox'", "got 5"]),
    ('[{"image_id": 785, "bbox": [1, 2, 3, 4], "score": "high"}]', ["detection #0 'score'", '"high"']),
    ('[{"image_id": [785], "bbox": [1, 2, 3, 4]}]', ["detection #0", "image_id [785]"]),
])
def test_boxes_file_with_a_wrong_structure_names_the_entry(engine, tmp_path, content, needles):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(content)
    result = predict(engine, IMAGE, "--boxes", boxes, "-o", tmp_path / "out")
    assert_one_line_error(result, str(boxes), *needles)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_huge_and_nan_score_boxes_are_dropped_with_a_warning_naming_them(engine, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"000000000785.jpg": [[0, 0, 1e12, 1e12, 0.9], [277, 45, 225, 333, 0.8], [1, 2, 3, 4, NaN]]}')
    result = predict(engine, IMAGE, "--boxes", boxes, "-o", tmp_path / "out")
    assert result.rc == 0 and "Traceback" not in result.stderr, result.stderr
    warned = warnings_of(result)
    assert any("box #2 of '000000000785.jpg'" in w and "score is nan" in w for w in warned), warned
    assert any("000000000785.jpg (640x425): dropped 1 box" in w and "#0 [0, 0, 1e+12, 1e+12]" in w
               for w in warned), warned
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["bbox"] for r in results] == [PERSON]
    assert np.abs(np.array(results[0]["keypoints"])).max() < 2000
    assert (tmp_path / "out" / IMAGE.name).is_file()
    assert "1 people in 1 images" in result.stdout


def test_only_a_nan_score_box_says_why_the_image_has_none(engine, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"000000000785.jpg": [[277, 45, 225, 333, NaN]]}')
    result = predict(engine, IMAGE, "--boxes", boxes, "-o", tmp_path / "out", "--no-draw")
    assert result.rc == 0, result.stderr
    warned = warnings_of(result)
    assert len(warned) == 2 and "dropped box #0 of '000000000785.jpg'" in warned[0] and "nan" in warned[0], warned
    assert "1 image(s) have no box" in warned[1]


def test_read_only_output_folder_is_refused_before_any_work(engine, tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs user namespaces (unshare -rm) to mount a read-only file system")
    mount = tmp_path / "ro"
    mount.mkdir()
    script = 'mount -t tmpfs -o ro tmpfs "$1" && shift && exec "$@"'
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(mount), sys.executable, "-m", "tokenpose.cli.main",
         "predict", str(IMAGE), "-e", str(engine), "-o", str(mount / "out")],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert_one_line_error(CliResult(proc.returncode, proc.stdout, proc.stderr), str(mount / "out"), "not writable",
                          "Read-only file system")
    assert list(mount.iterdir()) == []


def test_truncated_jpeg_is_warned_about_and_counted(engine, gt_boxes, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    shutil.copy(IMAGE, folder / IMAGE.name)
    data = (COCO_IMAGES / "000000000790.jpg").read_bytes()
    (folder / "000000000790.jpg").write_bytes(data[: len(data) // 2])
    result = predict(engine, folder, "--boxes", gt_boxes, "-o", tmp_path / "out", "--no-draw")
    assert result.rc == 0, result.stderr
    warned = warnings_of(result)
    assert len(warned) == 1 and "000000000790.jpg is truncated (no JPEG end marker)" in warned[0], warned
    assert "in 2 images (1 truncated)" in result.stdout
    assert {r["file_name"] for r in json.loads((tmp_path / "out" / "results.json").read_text())} == {
        "000000000785.jpg", "000000000790.jpg"}


def test_a_run_where_every_input_failed_exits_non_zero(engine, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    result = predict(engine, folder, "-o", tmp_path / "out")
    assert_one_line_error(result, "none of the 2 images", str(folder), "empty.jpg")
    assert list((tmp_path / "out").iterdir()) == []


def test_batch_size_zero_is_rejected(engine, tmp_path):
    assert_one_line_error(predict(engine, IMAGE, "-b", "0", "-o", tmp_path / "out"), "--batch-size must be >= 1, got 0")
    assert not (tmp_path / "out").exists()


def test_temp_files_of_a_killed_run_are_removed(engine, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".results.json.x1y2.tmp", out / ".000000000785.jpg.abc.tmp", out / ".clip.4242.partial.mp4"]
    for path in stale:
        path.write_bytes(b"half")
    (out / "keep.txt").write_text("mine")
    result = predict(engine, IMAGE, "-o", out, "--boxes", _one_box(tmp_path))
    assert result.rc == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000000000785.jpg", "keep.txt", "results.json"]


def _one_box(folder: Path) -> Path:
    path = folder / "one.json"
    path.write_text(json.dumps({IMAGE.name: [PERSON]}))
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_bytes(b""), "image file is empty"),
    (lambda p: p.write_text("plain text, not pixels"), "not in a format OpenCV can read"),
    (lambda p: None, "input not found"),
])
def test_unreadable_single_image_is_one_line(engine, tmp_path, make, needle):
    image = tmp_path / "photo.jpg"
    make(image)
    assert_one_line_error(predict(engine, image, "-o", tmp_path / "out"), needle, "photo.jpg")
    assert not (tmp_path / "out" / "results.json").exists()


def test_corrupt_video_is_one_line(engine, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    assert_one_line_error(predict(engine, video, "-o", tmp_path / "out"), "cannot open video", "clip.mp4")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


@pytest.fixture(scope="module")
def uninterrupted(engine, gt_boxes, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("uninterrupted")
    result = predict(engine, COCO_IMAGES, "--boxes", gt_boxes, "-o", out, "-b", "1", "--no-draw")
    assert result.rc == 0, result.stderr
    return json.loads((out / "results.json").read_text())


def _start_and_stop(engine: Path, gt_boxes: Path, out: Path, sig: int) -> int:
    """Start a drawing run over the 70 coco_mini images; once a few are in the results log, send
    `sig`. Returns the exit code."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenpose.cli.main", "predict", str(COCO_IMAGES), "-e", str(engine),
         "--boxes", str(gt_boxes), "-o", str(out), "-b", "1"],
        cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        preexec_fn=sigint_as_usual,
    )
    log = out / "results.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if log.is_file() and log.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    return proc.wait(timeout=120)


@pytest.mark.parametrize("sig, rc", [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)])
def test_interrupted_run_resumes_to_the_uninterrupted_results(engine, gt_boxes, uninterrupted, tmp_path, sig, rc):
    out = tmp_path / "out"
    assert _start_and_stop(engine, gt_boxes, out, sig) == rc
    done = [json.loads(line)["item"] for line in (out / "results.jsonl").read_text().splitlines()
            if line.endswith("}")]
    assert 3 <= len(done) < 70
    if sig == signal.SIGINT:  # a clean stop also leaves a valid results.json of what is done
        partial = json.loads((out / "results.json").read_text())
        assert {r["file_name"] for r in partial} <= set(done)
    result = predict(engine, COCO_IMAGES, "--boxes", gt_boxes, "-o", out, "-b", "1", "--resume")
    assert result.rc == 0, result.stderr
    assert "people in 70 images" in result.stdout and "resumed)" in result.stdout
    resumed = json.loads((out / "results.json").read_text())
    assert [(r["file_name"], r["image_id"], r["bbox"]) for r in resumed] == [
        (r["file_name"], r["image_id"], r["bbox"]) for r in uninterrupted]
    np.testing.assert_allclose([r["keypoints"] for r in resumed], [r["keypoints"] for r in uninterrupted], atol=1e-4)
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted([*(p.name for p in COCO_IMAGES.iterdir()), "results.json"])  # no log, no temp files


def test_detector_options_fail_in_one_line(engine, tmp_path):
    """A detector graph in none of the formats, an impossible --detector-class, --det-every with a
    boxes file and tracking under --ray: one error line each, before any work."""
    from test_detectors import constant_graph, yolov8_output

    odd = constant_graph(tmp_path / "odd.onnx", {"a": np.zeros((1, 4, 4)), "b": np.zeros((1, 4, 4))})
    assert_one_line_error(predict(engine, IMAGE, "--detector", odd, "-o", tmp_path / "o1"),
                          str(odd), "in none of the formats", "outputs: a (B, 4, 4), b (B, 4, 4)")
    v8 = constant_graph(tmp_path / "v8.onnx", {"output0": yolov8_output()})
    assert_one_line_error(predict(engine, IMAGE, "--detector", v8, "--detector-class", "7", "-o", tmp_path / "o2"),
                          "has 2 classes: --detector-class 7 is impossible")
    assert_one_line_error(predict(engine, IMAGE, "--boxes", _one_box(tmp_path), "--det-every", "3", "-o",
                                  tmp_path / "o3"), "--det-every", "--boxes")
    assert_one_line_error(predict(engine, IMAGE, "--track", "--ray", "-o", tmp_path / "o4"), "--track", "--ray")
    assert not any((tmp_path / f"o{k}" / "results.json").exists() for k in range(1, 5))
