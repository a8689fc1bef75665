"""Data-root resolution shared by training and evaluation."""

from __future__ import annotations

import pytest
from conftest import COCO_MINI, MPII_MINI

from tokenpose.data.roots import DataRootError, resolve_data_files


def test_repo_fixtures_resolve():
    ann, images = resolve_data_files("coco", COCO_MINI, split="val")
    assert ann.name == "person_keypoints_mini.json" and images == COCO_MINI / "images"
    ann, images = resolve_data_files("mpii", MPII_MINI, split="valid")
    assert ann.name == "mpii_mini.json" and images == MPII_MINI / "images"


def test_coco_split_layout_and_ambiguity(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"person_keypoints_{split}2017.json").write_text("{}")
    ann, images = resolve_data_files("coco", tmp_path, split="val")
    assert ann.name == "person_keypoints_val2017.json" and images == tmp_path / "images" / "val2017"
    for name in ("person_keypoints_a.json", "person_keypoints_b.json"):
        (tmp_path / "annotations" / name).write_text("{}")
    with pytest.raises(DataRootError, match="several annotation files"):
        resolve_data_files("coco", tmp_path, split="test")


@pytest.mark.parametrize(
    ("kind", "make", "pattern"),
    [
        ("coco", lambda root: None, "no COCO annotations under"),
        ("mpii", lambda root: None, r"expected annot/valid\.json"),
        ("coco", lambda root: (root / "annotations").mkdir() or (root / "annotations" / "person_keypoints_x.json").write_text("{}"),
         "no image folder under"),
    ],
)
def test_missing_files_are_named(tmp_path, kind, make, pattern):
    make(tmp_path)
    with pytest.raises(DataRootError, match=pattern):
        resolve_data_files(kind, tmp_path, split="valid" if kind == "mpii" else "val")


def test_missing_root_and_explicit_files(tmp_path):
    with pytest.raises(DataRootError, match="data root not found"):
        resolve_data_files("coco", tmp_path / "nope")
    with pytest.raises(DataRootError, match="give --data-root"):
        resolve_data_files("coco", None)
    with pytest.raises(DataRootError, match="annotation file not found"):
        resolve_data_files("coco", None, tmp_path / "a.json", tmp_path)


def test_fallback_never_takes_another_split(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / "train2017").mkdir(parents=True)
    (tmp_path / "annotations" / "person_keypoints_train2017.json").write_text("{}")
    with pytest.raises(DataRootError, match=r"expected annotations/person_keypoints_val2017\.json"):
        resolve_data_files("coco", tmp_path, split="val")
    mpii = tmp_path / "mpii"
    (mpii / "annot").mkdir(parents=True)
    (mpii / "images").mkdir()
    (mpii / "annot" / "train.json").write_text("[]")
    with pytest.raises(DataRootError, match=r"expected annot/valid\.json"):
        resolve_data_files("mpii", mpii, split="valid")
