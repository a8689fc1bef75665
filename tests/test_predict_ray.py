"""`tokenpose predict --ray`: the same results and drawings as the local run, through worker kills,
an interrupted driver and `--resume`, on the real coco_mini images with a tiny ONNX engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_run import COCO_ANN, COCO_IMAGES, ROOT, cli_env, run_cli, sigint_as_usual
from test_engines import build_artifacts
from test_eval_cli import write_clip

pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    onnx = build_artifacts(folder)["onnx"]
    ann = json.loads(COCO_ANN.read_text())
    boxes = folder / "gt_boxes.json"  # ground-truth person boxes as COCO detection results
    boxes.write_text(json.dumps([{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
                                 for a in ann["annotations"] if a["num_keypoints"] > 0]))
    local = folder / "local"
    res = run_cli("predict", COCO_IMAGES, "-e", onnx, "--boxes", boxes, "-o", local, "-b", "8")
    assert res.rc == 0, res.stderr
    return {"onnx": onnx, "boxes": boxes, "local": local}


def _same_results(a: Path, b: Path) -> None:
    def rows(folder: Path) -> list[dict]:
        return sorted(json.loads((folder / "results.json").read_text()), key=lambda r: (r["file_name"], r["bbox"]))

    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb):
        np.testing.assert_allclose(x["keypoints"], y["keypoints"], atol=1e-6)
        assert {k: v for k, v in x.items() if k != "keypoints"} == {k: v for k, v in y.items() if k != "keypoints"}


def _predict_ray(setup, source, out, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tokenpose.cli.main", "predict", str(source), "-e", str(setup["onnx"]),
         "--boxes", str(setup["boxes"]), "-o", str(out), "--ray", *map(str, extra)],
        cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=sigint_as_usual)


def test_ray_job_equals_the_local_run(setup, tmp_path):
    out = tmp_path / "ray"
    proc = _predict_ray(setup, COCO_IMAGES, out, "--workers", "2", "--batch", "8")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "in 70 images" in stdout and "Traceback" not in stderr
    _same_results(setup["local"], out)
    drawn = sorted(p.name for p in setup["local"].glob("*.jpg"))
    assert drawn == sorted(p.name for p in out.glob("*.jpg")) and len(drawn) == 70
    assert all((setup["local"] / n).read_bytes() == (out / n).read_bytes() for n in drawn)
    assert not (out / "results.jsonl").exists()


def test_ray_job_on_a_glob_and_a_video(setup, tmp_path):
    pattern = COCO_IMAGES / "0000000007*.jpg"
    res = run_cli("predict", pattern, "-e", setup["onnx"], "--boxes", setup["boxes"], "-o", tmp_path / "g", "--ray")
    assert res.rc == 0, res.stderr
    names = {r["file_name"] for r in json.loads((tmp_path / "g" / "results.json").read_text())}
    assert names == {"000000000785.jpg", "000000000790.jpg"}
    video = write_clip(tmp_path / "clip.avi", frames=6)
    for mode, extra in (("local", []), ("ray", ["--ray", "-b", "4"])):
        res = run_cli("predict", video, "-e", setup["onnx"], "-o", tmp_path / mode, *extra)
        assert res.rc == 0 and "6 frames" in res.stdout, res.stderr
    _same_results(tmp_path / "local", tmp_path / "ray")
    frames = []
    for mode in ("local", "ray"):
        capture = cv2.VideoCapture(str(tmp_path / mode / "clip.mp4"))
        frames.append([capture.read()[1] for _ in range(6)])
    assert all(np.array_equal(a, b) for a, b in zip(*frames))


def _wait_for_log(out: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = out / "results.jsonl"
        if log.is_file() and log.read_text().count("\n") >= 2:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    pytest.fail("no results were recorded in time")


def _worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"_PoseWorker" in cmdline:
                pids.append(int(entry.name))
    return pids


def test_a_killed_engine_worker_is_retried_and_the_results_are_complete(setup, tmp_path):
    out = tmp_path / "killed"
    proc = _predict_ray(setup, COCO_IMAGES, out, "--workers", "2", "-b", "2")
    _wait_for_log(out, proc)
    pids = _worker_pids()
    assert pids, "no engine worker process found"
    os.kill(pids[0], signal.SIGKILL)
    _stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    _same_results(setup["local"], out)


def test_an_interrupted_job_resumes_to_the_same_results(setup, tmp_path):
    out = tmp_path / "stopped"
    proc = _predict_ray(setup, COCO_IMAGES, out, "-b", "2")
    _wait_for_log(out, proc)
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    done = (out / "results.jsonl").read_text().count("\n")
    assert 0 < done < 70
    proc = _predict_ray(setup, COCO_IMAGES, out, "--resume")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert f"({done} resumed)" in stdout or "resumed" in stdout
    _same_results(setup["local"], out)
