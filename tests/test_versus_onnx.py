"""benchmarks/versus_onnx.py: our engine beside another export of the same network, and refusing a different one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from test_engines import TINY, build_artifacts

from tokenpose.engines.base import load_engine
from tokenpose.models.tokenpose import TokenPose

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "versus_onnx.py"


def plain_export(model: TokenPose, path: Path) -> None:
    """The model in the official computation (reference form), exported the way a user would."""
    model.reference_form = True
    torch.onnx.export(model.eval(), (torch.randn(1, 3, *model.config.input_hw),), str(path), dynamo=False,
                      opset_version=17, input_names=["images"], output_names=["heatmaps"],
                      dynamic_axes={"images": {0: "batch"}, "heatmaps": {0: "batch"}})


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_versus_onnx_times_both_and_refuses_another_network(tmp_path):
    art = build_artifacts(tmp_path)
    plain_export(load_engine(art["pth"]).model, tmp_path / "same.onnx")  # the weights of the artifact
    proc = run("--baseline", str(tmp_path / "same.onnx"), "--engine", str(art["onnx"]), "--engine", str(art["pth"]),
               "--batches", "1,2",
               "--rounds", "2", "--warmup", "0", "--settle-ms", "0", "--also-fusions", "attention",
               "--out", str(tmp_path / "res"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "res.json").read_text())
    rows = {(r["batch"], r["engine"]): r for r in result["rows"]}
    engines = ("baseline", "tokenpose fp32", "tokenpose fp32 (attention)", "tokenpose torch fp32")
    assert set(rows) == {(b, e) for b in (1, 2) for e in engines}
    # The second instance ran with only the fusions asked for (this quick artifact's manifest lists none).
    assert set(result["fusions"]) == set(engines[1:3]) and set(result["fusions"][engines[2]]) == {"attention"}
    assert all(r["max_abs_diff_vs_baseline"] < 1e-4 and r["images_per_s"] > 0 for r in rows.values())
    assert rows[(1, "baseline")]["x_baseline"] == 1.0 and rows[(1, "baseline")]["x_baseline_paired"] == 1.0
    assert all(r["x_baseline_paired_iqr"][0] <= r["x_baseline_paired"] <= r["x_baseline_paired_iqr"][1]
               for r in rows.values())
    assert "Machine:" in (tmp_path / "res.md").read_text()

    torch.manual_seed(123)
    plain_export(TokenPose(TINY), tmp_path / "other.onnx")  # same architecture, other weights
    proc = run("--baseline", str(tmp_path / "other.onnx"), "--engine", str(art["onnx"]), "--batches", "1",
               "--rounds", "1", "--warmup", "0", "--out", str(tmp_path / "bad"))
    assert proc.returncode != 0 and "not the same network" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad.json").exists()
