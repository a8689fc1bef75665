"""scripts/gpu_check.sh on CPU: `--dry-run` checks that every command of the GPU run parses (the real
tokenpose-bench / tokenpose-train / pytest / pip / AOTInductor helper commands, with --help,
--collect-only or --check), runs nothing heavy, and reports a command that does not run; bad usage
is one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["venv", "install", "install-deps", "missing-deps", "pytest-gpu", "bench-torch", "bench-cuda-graphs",
         "aoti-export-s-v2", "aoti-export-t", "bench-aoti", "train-amp-bf16", "train-amp-fp16", "target",
         "trt-export", "cpp-configure"]  # the last two run for real only where TensorRT imports

pytestmark = pytest.mark.slow  # the dry run collects the test suite once (about 10 s)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False,
                          cwd=ROOT)


def test_dry_run_parses_every_command(tmp_path):
    out = tmp_path / "out"
    done = _run("--dry-run", "--python", sys.executable, str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["ok"]
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["exit"] == 0 for s in summary["steps"])
    # Parse only: nothing exported, benchmarked or trained.
    assert not any((out / name).exists() for name in ("bench-torch.json", "aoti", "train-bf16", "target.json",
                                                      "cpp-tensorrt/build", "cpp-tensorrt/tokenpose_t_fp32.onnx"))
    assert "tokenpose-bench" in (out / "bench-torch.log").read_text()  # the --help of the real command
    assert "--cuda-graphs" in (out / "bench-cuda-graphs.log").read_text()


def test_dry_run_reports_a_command_that_does_not_run(tmp_path):
    """An interpreter whose environment has no tokenpose console scripts (and whose pytest refuses the
    arguments): those steps fail, the others pass, exit status 1."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    python = fake_bin / "python"
    python.write_text(f'#!/bin/sh\n[ "$1 $2" = "-m pytest" ] && exit 4\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    done = _run("--dry-run", "--python", str(python), str(out))
    assert done.returncode == 1
    steps = {s["step"]: s["exit"] for s in json.loads((out / "summary.json").read_text())["steps"]}
    failed = {name for name, rc in steps.items() if rc != 0}
    assert failed == {"pytest-gpu", "bench-torch", "bench-cuda-graphs", "bench-aoti", "train-amp-bf16",
                      "train-amp-fp16", "trt-export"}
    assert "gpu_check: bench-torch failed (exit 127)" in done.stderr


@pytest.mark.parametrize("args, message", [
    ([], "usage: scripts/gpu_check.sh"),
    (["--frobnicate", "out"], "gpu_check: unknown option --frobnicate"),
    (["--wheels", "/nonexistent/wheels", "out"], "gpu_check: --wheels /nonexistent/wheels is not a folder"),
])
def test_bad_usage_is_one_line_and_status_2(tmp_path, args, message):
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False,
                          cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0].startswith(message)
    assert not (tmp_path / "out").exists()
