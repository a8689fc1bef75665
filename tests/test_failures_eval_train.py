"""Failure cases of `tokenpose eval` and `tokenpose train` through the real CLI (issue 12).

Each case: exit code, one `error:` line naming the file and every reason, and what is on disk after.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_run import COCO_ANN, COCO_IMAGES, COCO_MINI, assert_one_line_error, run_cli
from test_engines import TINY, peaked_model

from tokenpose.models.checkpoints import save_weights
from tokenpose.models.tokenpose import TokenPose

DETS = COCO_MINI / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person_subset.json"
UNKNOWN_IMAGE_ID = 999999999


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "tiny.pth"
    save_weights(peaked_model(), path, variant={"model_config": dataclasses.asdict(TINY)})
    return path


@pytest.fixture
def bad_detections(tmp_path) -> Path:
    """The real detection file of one coco_mini image, plus one detection on an image the
    annotation file does not have and one with a NaN box (json allows NaN)."""
    dets = [d for d in json.loads(DETS.read_text()) if d["image_id"] == 785]
    dets.append({**dets[0], "image_id": UNKNOWN_IMAGE_ID})
    dets.append({**dets[0], "bbox": [float("nan"), 10.0, 50.0, 80.0]})
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    return path


@pytest.fixture
def unwritable(tmp_path) -> Iterator[Path]:
    """A path no output can be created under: a read-only folder for a normal user; for root,
    who writes anywhere, a path under a regular file."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder / "out"
        folder.chmod(0o755)
        return
    (tmp_path / "plain.txt").write_text("a regular file\n")
    yield tmp_path / "plain.txt" / "out"


def eval_args(pth: Path, *more: str | os.PathLike) -> list[str | os.PathLike]:
    return ["eval", "--engine", pth, "--data-root", COCO_MINI, "--ann-file", COCO_ANN, *more]


def test_eval_bad_detections_lists_every_reason_on_one_line(tiny_pth, bad_detections, tmp_path):
    results = tmp_path / "results.json"
    res = run_cli(*eval_args(tiny_pth, "--det-file", bad_detections, "--results", results))
    line = assert_one_line_error(res, "detection file", str(bad_detections), "2 unusable",
                                 f"image id {UNKNOWN_IMAGE_ID} is not in", "is not finite", "--on-bad skip")
    assert "annotation file" not in line and not line.endswith(":")
    assert not results.exists()


def test_eval_on_bad_skip_drops_them_with_a_note(tiny_pth, bad_detections, tmp_path):
    results = tmp_path / "results.json"
    res = run_cli(*eval_args(tiny_pth, "--det-file", bad_detections, "--results", results, "--on-bad", "skip"))
    assert res.rc == 0, res.stderr
    notes = [ln for ln in res.error_lines if ln.startswith("note:") and "skipped 2 unusable" in ln]
    assert len(notes) == 1 and str(bad_detections) in notes[0]
    assert {r["image_id"] for r in json.loads(results.read_text())} == {785}


def test_eval_missing_detection_file_is_called_a_detection_file(tiny_pth, tmp_path):
    res = run_cli(*eval_args(tiny_pth, "--det-file", tmp_path / "absent.json"))
    assert_one_line_error(res, "detection file not found", "absent.json")


def test_eval_results_where_nothing_can_be_written(tiny_pth, unwritable):
    results = unwritable / "results.json"
    res = run_cli(*eval_args(tiny_pth, "--max-images", "1", "--results", results))
    assert_one_line_error(res, str(results))
    assert not results.exists()


@pytest.fixture
def images_with_one_missing(tmp_path) -> Path:
    images = tmp_path / "images"
    shutil.copytree(COCO_IMAGES, images)
    (images / "000000000785.jpg").unlink()
    return images


def train_args(images: Path, out: Path, *more: str) -> list[str | os.PathLike]:
    return ["train", "--variant", "t", "--ann-file", COCO_ANN, "--image-dir", images, "--out", out, "--epochs", "1",
            "--workers", "0", "--no-progress", *more]


def test_train_missing_images_lists_them_on_one_line(images_with_one_missing, tmp_path):
    out = tmp_path / "run"
    res = run_cli(*train_args(images_with_one_missing, out))
    line = assert_one_line_error(res, "000000000785.jpg", "unusable sample(s)", "--on-bad skip")
    assert "on_bad='skip'" in line and not line.endswith(":")
    assert not out.exists()


def test_train_on_bad_skip_warns_in_one_line_and_trains(images_with_one_missing, tmp_path):
    out = tmp_path / "run"
    res = run_cli(*train_args(images_with_one_missing, out, "--on-bad", "skip", "--batch-size", "2",
                              "--max-steps", "1"), PYTHONWARNINGS="default")
    assert res.rc == 0, res.stderr
    warned = [ln for ln in res.error_lines if "unusable" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: ") and "000000000785.jpg" in warned[0]
    assert (out / "last.pth").is_file() and (out / "final.pth").is_file()


def test_train_out_where_nothing_can_be_written(unwritable):
    res = run_cli("train", "--variant", "t", "--data-root", COCO_MINI, "--out", unwritable, "--epochs", "1",
                  "--no-progress")
    assert_one_line_error(res, f"cannot write {unwritable}")
    assert not unwritable.exists()


def test_eval_loads_a_plain_model_state_dict(tmp_path):
    """`torch.save(model.state_dict())` (our module names, not the official ones) loads as is."""
    torch.manual_seed(0)
    path = tmp_path / "plain_state_dict.pth"
    torch.save(TokenPose("t").state_dict(), path)
    res = run_cli(*eval_args(path, "--variant", "t", "--max-images", "1", "--json"))
    assert res.rc == 0, res.stderr
    assert json.loads(res.stdout)["engine"]["variant"] == "t"


def test_plain_state_dict_of_another_variant_says_how_it_was_read(tmp_path):
    path = tmp_path / "s_v1_state_dict.pth"
    torch.save(TokenPose("s-v1").state_dict(), path)
    res = run_cli(*eval_args(path, "--variant", "t", "--max-images", "1"))
    assert_one_line_error(res, str(path), "tokenpose's own module names", "does not fit TokenPose 't'")
