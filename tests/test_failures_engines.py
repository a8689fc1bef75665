"""Artifacts that do not parse, through the real CLI (issue 12 item 4): one `error:` line naming the
file, exit code 1, no traceback, nothing written. The manifest beside each damaged file is re-hashed
to match it, so the loader gets past the sha256 check and meets the damaged bytes themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_run import COCO_IMAGES, COCO_MINI, assert_one_line_error, run_cli
from test_engines import build_artifacts

from tokenpose.manifest import BatchRange, Manifest, read_manifest, write_manifest

IMAGE = COCO_IMAGES / "000000000785.jpg"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("failures_engines"))


def truncated(original: Path, folder: Path) -> Path:
    """The first half of `original` under the same name in `folder`, with a manifest whose sha256 is
    the truncated file's (what a copy interrupted mid-way and then re-registered looks like)."""
    folder.mkdir(parents=True, exist_ok=True)
    damaged = folder / original.name
    data = original.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    if Path(f"{original}.json").is_file():
        write_manifest(read_manifest(original), damaged)
    return damaged


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_truncated_onnx_through_eval_is_one_line(artifacts, tmp_path):
    onnx = truncated(artifacts["onnx"], tmp_path / "bad")
    results = tmp_path / "results.json"
    res = run_cli("eval", "-e", onnx, "-d", COCO_MINI, "--max-images", "1", "--results", results)
    assert_one_line_error(res, f"cannot read ONNX model {onnx}: ")
    assert not results.exists()


def test_truncated_onnx_through_predict_is_one_line(artifacts, tmp_path):
    onnx = truncated(artifacts["onnx"], tmp_path / "bad")
    out = tmp_path / "out"
    res = run_cli("predict", IMAGE, "--engine", onnx, "--out", out)
    assert_one_line_error(res, f"cannot read ONNX model {onnx}: ")
    assert files_under(out) == []  # no results.json, no drawn image


def test_truncated_onnx_through_bench_is_one_skip_line(artifacts, tmp_path):
    """bench keeps going past an engine it cannot open and reports it as skipped (its rows are per
    engine); the reason is the same one line, and nothing is a traceback."""
    onnx = truncated(artifacts["onnx"], tmp_path / "bad")
    report = tmp_path / "bench.json"
    res = run_cli("bench", "--engine", onnx, "--engines", "", "--device", "cpu", "--batch", "1", "--warmup", "0",
                  "--iters", "1", "--json", report)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    reason = f"cannot read ONNX model {onnx}: "
    assert sum(reason in line for line in (res.stdout + res.stderr).splitlines()) >= 1
    skipped = json.loads(report.read_text())["skipped"]
    assert [reason in s["reason"] for s in skipped] == [True]


def test_truncated_pth_and_pt2_through_predict_are_one_line(artifacts, tmp_path):
    pth = truncated(artifacts["pth"], tmp_path / "pth")
    assert_one_line_error(run_cli("predict", IMAGE, "--engine", pth, "--out", tmp_path / "out1"),
                          str(pth), "not a readable PyTorch checkpoint")
    pt2 = tmp_path / "pt2" / "model.pt2"
    pt2.parent.mkdir()
    shutil.copy(artifacts["pth"], pt2)  # a zip archive, but not an AOTInductor package
    write_manifest(Manifest.for_config("t", artifact="", format="pt2", precision="fp32",
                                       batch=BatchRange(1, 1, 4).as_dict()), pt2)
    assert_one_line_error(run_cli("predict", IMAGE, "--engine", pt2, "--out", tmp_path / "out2"),
                          f"cannot read AOTInductor package {pt2}: ")
    assert files_under(tmp_path / "out1") == files_under(tmp_path / "out2") == []


def test_empty_missing_and_wrong_variant_checkpoints_are_one_line(artifacts, tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert_one_line_error(run_cli("predict", IMAGE, "--engine", empty, "--out", tmp_path / "o1"), str(empty))
    missing = tmp_path / "missing.onnx"
    assert_one_line_error(run_cli("predict", IMAGE, "--engine", missing, "--out", tmp_path / "o2"), str(missing))
    # a plain model.state_dict() of variant t, loaded as s-v2: the keys that do not fit and the variant it is
    official_t = tmp_path / "t.pth"
    import torch

    from tokenpose.models import create_model
    torch.save(create_model("t").state_dict(), official_t)
    assert_one_line_error(run_cli("eval", "-e", official_t, "-v", "s-v2", "-d", COCO_MINI, "--max-images", "1"),
                          str(official_t), "does not fit TokenPose 's-v2'", "checkpoint of variant 't'")
    assert files_under(tmp_path / "o1") == files_under(tmp_path / "o2") == []


def test_tampered_artifact_or_manifest_is_one_line(artifacts, tmp_path):
    folder = tmp_path / "tampered"
    folder.mkdir()
    onnx = folder / artifacts["onnx"].name
    data = bytearray(artifacts["onnx"].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped after export, the manifest kept
    onnx.write_bytes(bytes(data))
    shutil.copy(Path(f"{artifacts['onnx']}.json"), Path(f"{onnx}.json"))
    assert_one_line_error(run_cli("predict", IMAGE, "--engine", onnx, "--out", tmp_path / "o1"), str(onnx), "sha256")
    other = tmp_path / "edited"
    other.mkdir()
    onnx2 = other / artifacts["onnx"].name
    shutil.copy(artifacts["onnx"], onnx2)
    manifest = json.loads(Path(f"{artifacts['onnx']}.json").read_text())
    manifest["heatmap_hw"] = [32, 24]  # contradicts the model it describes
    Path(f"{onnx2}.json").write_text(json.dumps(manifest))
    res = run_cli("eval", "-e", onnx2, "-d", COCO_MINI, "--max-images", "1")
    assert_one_line_error(res, str(onnx2))
    assert files_under(tmp_path / "o1") == []
