"""`tokenpose export` failure behaviour through the real CLI (issue 12): temp files a killed export
left are removed by the next export into the folder; bad calibration data, bad batch ranges and
option clashes are one `error:` line, exit code 1, no traceback, and no artifact written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_run import COCO_ANN, COCO_IMAGES, assert_one_line_error, run_cli


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_next_export_removes_the_temp_files_a_killed_one_left(tmp_path):
    out = tmp_path / "engines"
    out.mkdir()
    # What a kill leaves: atomic_write's hidden temp file, and the AOTInductor temp folder.
    (out / ".tokenpose_t_fp32.onnx.k3j2x9.tmp").write_bytes(b"half an onnx model")
    (out / ".tokenpose_t_fp32.pt2.a81b.tmp").mkdir()
    (out / ".tokenpose_t_fp32.pt2.a81b.tmp" / "tokenpose_t_fp32.pt2").write_bytes(b"half a package")
    (out / "notes.tmp").write_text("a visible file of the user's")  # not one of ours: kept
    res = run_cli("export", "--variant", "t", "--out", out, "--no-simplify", "--no-engine")
    assert res.rc == 0, res.stderr
    assert files_under(out) == [
        "notes.tmp", "tokenpose_t_fp32.onnx", "tokenpose_t_fp32.onnx.json",
    ]
    assert "removed 2 temp file(s) a killed run left in" in res.stdout


def _calibration_case(kind: str, folder: Path) -> Path:
    """Bad calibration data of one `kind`, made in `folder`."""
    if kind == "truncated json":
        text = COCO_ANN.read_text()
        path = folder / "annotations" / "person_keypoints_cut.json"
        path.parent.mkdir()
        path.write_text(text[: len(text) // 2])
        return path
    if kind == "json without people":
        data = json.loads(COCO_ANN.read_text())
        data["annotations"] = [dict(a, iscrowd=1) for a in data["annotations"]]
        path = folder / "annotations" / "person_keypoints_crowd.json"
        path.parent.mkdir()
        path.write_text(json.dumps(data))
        shutil.copytree(COCO_IMAGES, folder / "images")
        return path
    if kind == "json without its images":
        path = folder / "person_keypoints_alone.json"
        shutil.copy(COCO_ANN, path)
        return path
    if kind == "unreadable images":
        (folder / "empty.jpg").write_bytes(b"")
        (folder / "text.png").write_text("not a png at all")
        return folder
    if kind == "no images":
        (folder / "readme.txt").write_text("no pictures here")
        return folder
    if kind == "not a folder or json":
        path = folder / "boxes.csv"
        path.write_text("x,y,w,h\n")
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, needles", [
    ("truncated json", ["cannot read COCO json", "person_keypoints_cut.json"]),
    ("json without people", ["has no usable person boxes", "person_keypoints_crowd.json"]),
    ("json without its images", ["cannot find the image folder", "person_keypoints_alone.json"]),
    ("unreadable images", ["no readable images in calibration data", "image file is empty"]),
    ("no images", ["holds no images"]),
    ("not a folder or json", ["must be a folder of images or a COCO .json", "boxes.csv"]),
])
def test_bad_calibration_data_is_one_line(tmp_path, kind, needles):
    calib_dir = tmp_path / "calib"
    calib_dir.mkdir()
    calib = _calibration_case(kind, calib_dir)
    out = tmp_path / "engines"
    res = run_cli("export", "--variant", "t", "--int8", "--calib-data", calib, "--out", out, "--no-engine")
    line = assert_one_line_error(res, *needles)
    assert str(calib) in line or calib.name in line
    assert files_under(out) == []


@pytest.mark.parametrize("args, needles", [
    (["--batch", "8:1:4"], ["batch range must satisfy 1 <= min <= opt <= max", "8:1:4"]),
    (["--batch", "0:1:2"], ["batch range must satisfy", "0:1:2"]),
    (["--batch", "1:x:8"], ["batch range must be 'min:opt:max' integers", "1:x:8"]),
    (["--batch", "1:2:3:4"], ["batch range must be 'min:opt:max'", "1:2:3:4"]),
    (["--int8-gpu"], ["--int8-gpu needs --int8"]),
    (["--int8", "--int8-method", "magic", "--calib-data", str(COCO_ANN)], ["calibration method", "magic"]),
])
def test_bad_options_are_one_line(tmp_path, args, needles):
    out = tmp_path / "engines"
    res = run_cli("export", "--variant", "t", "--out", out, "--no-engine", *args)
    assert_one_line_error(res, *needles)
    assert files_under(out) == []
