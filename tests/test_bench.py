"""tokenpose-bench: a tiny real run (a 1-layer TokenPose through the torch and ONNX Runtime engines),
the JSON schema, skipped engines with reasons, markdown and plot files, and the CLI's errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tokenpose.bench.results import SCHEMA, latency_stats
from tokenpose.bench.settings import BenchError, BenchSettings, parse_batches, parse_names
from tokenpose.cli.bench import command
from tokenpose.cli.common import standalone
from tokenpose.models.checkpoints import save_weights
from tokenpose.models.config import ModelConfig
from tokenpose.models.tokenpose import TokenPose

# 1 layer, 32 wide, at the real 256x192 input: milliseconds per call on a CPU.
TINY = ModelConfig("bench-tiny", "pixels", input_hw=(256, 192), heatmap_hw=(64, 48), patch_hw=(16, 12),
                   heads=2, depth=1, dim=32, mlp_hidden=64, head_hidden=32)


def run_cli(*args: str):
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory) -> dict[str, Path]:
    """The tiny model as a `.pth` (with its config as metadata) and its FP32 ONNX export + manifest."""
    from tokenpose.export.pipeline import ExportOptions, export_model

    folder = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    pth = folder / "tiny.pth"
    save_weights(TokenPose(TINY).eval(), pth, variant={"model_config": dataclasses.asdict(TINY)})
    # Simplified as tokenpose-export does by default: constant reshape shapes, so the attention fuses.
    summary = export_model(ExportOptions(variant=TINY, out_dir=folder, checkpoint=pth, engine=False,
                                         verify_batches=(1,)), log=lambda _m: None)
    return {"pth": pth, "onnx": summary.artifacts[0].path, "folder": folder}


@pytest.fixture(scope="module")
def tiny_run(tiny_artifacts) -> tuple[dict, Path, object]:
    out = tiny_artifacts["folder"] / "out"
    res = run_cli(
        "--engine", str(tiny_artifacts["pth"]), "--engine", str(tiny_artifacts["onnx"]),
        "--engines", "trt-fp16,trt-int8", "--variant", "t", "--device", "cpu",
        "--batch", "1,2", "--warmup", "1", "--iters", "3", "--peak-size", "128", "--settle-ms", "0",
        "--pipeline", "--persons", "3", "--pipeline-images", "2", "--profile",
        "--work-dir", str(tiny_artifacts["folder"] / "work"),
        "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md"), "--plot", str(out / "bench.png"),
    )
    assert res.exit_code == 0, res.output
    return json.loads((out / "bench.json").read_text()), out, res


def test_latency_stats_percentiles():
    stats = latency_stats(np.arange(1, 101, dtype=float))
    assert (stats.p50, stats.p90, stats.p99) == pytest.approx((50.5, 90.1, 99.01))
    assert (stats.min, stats.max, stats.mean) == (1.0, 100.0, 50.5)
    with pytest.raises(BenchError, match="no timing samples"):
        latency_stats([])


def test_parsers_reject_bad_values():
    assert parse_batches("1, 8,8,32") == [1, 8, 32]
    with pytest.raises(BenchError, match="batch sizes must be >= 1, got 0"):
        parse_batches("1,0")
    with pytest.raises(BenchError, match="integers like 1,8,32"):
        parse_batches("1,x")
    assert parse_names("onnx,torch", "engine", ["torch", "onnx"]) == ["onnx", "torch"]
    with pytest.raises(BenchError, match="unknown engine 'tensorflow'; valid: torch, onnx"):
        parse_names("torch,tensorflow", "engine", ["torch", "onnx"])


@pytest.mark.parametrize(("args", "message"), [
    (["--batch", "0"], "error: batch sizes must be >= 1, got 0"),
    (["--engines", "torch,onnx-int4"], "error: unknown engine 'onnx-int4'; valid: torch,"),
    (["--variant", "s-v3"], "error: unknown variant 's-v3'; valid: t, s-v1"),
    (["--iters", "0"], "error: --iters must be >= 1, got 0"),
    (["--seconds", "0"], "error: --seconds must be > 0, got 0.0"),
    (["--device", "tpu"], "error: --device must be auto, cpu or cuda; got 'tpu'"),
    (["--engine", "missing.onnx"], "error: --engine missing.onnx: file not found"),
    (["--engine", "model.txt"], "error: --engine model.txt: unknown engine file type; expected one of .pth"),
])
def test_cli_bad_input_is_one_clear_line(args, message):
    res = run_cli(*args)
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), res.output


def test_console_script_entry_point_is_standalone():
    import tokenpose.cli.bench as bench_cli

    assert callable(bench_cli.main)
    assert bench_cli.main.__qualname__ == standalone(command).__qualname__


def test_json_schema_of_a_tiny_run(tiny_run):
    data, _, _ = tiny_run
    assert data["schema"] == SCHEMA
    assert list(data) == ["schema", "created", "command", "settings", "provenance", "complexity", "peaks", "rows",
                          "skipped", "pipeline", "profiles"]
    prov = data["provenance"]
    assert prov["cpu"]["logical_cores"] >= 1 and prov["cpu"]["model"]
    assert prov["versions"]["torch"] == torch.__version__ and prov["versions"]["onnxruntime"]
    assert prov["threads"]["torch_intra_op"] >= 1
    assert data["settings"]["batches"] == [1, 2] and data["settings"]["device"] == "cpu"
    # the table variant named by --variant gets its complexity row even though its engines were skipped
    assert [c["variant"] for c in data["complexity"]] == ["t"]
    assert data["complexity"][0]["paper_gflops"] == 1.3

    rows = data["rows"]
    assert {(r["backend"], r["batch"]) for r in rows} == {("torch", 1), ("torch", 2), ("onnxruntime", 1),
                                                          ("onnxruntime", 2)}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["variant"] == "bench-tiny" and r["precision"] == "fp32" and r["timing"] == "wall_clock"
        assert r["iters"] == 3
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["throughput_ips"] == pytest.approx(r["batch"] / (lat["mean"] / 1e3))
        assert r["memory"]["kind"] in ("rss", "rss_lifetime_max") and r["memory"]["peak_mb"] > 10
        assert r["cpu_util"] > 0
        assert r["true_gflops"] is None  # a variant outside the table: no FLOP count to claim
    by = {(r["backend"], r["batch"]): r for r in rows}
    assert by["torch", 1]["speedup_vs_torch"] == 1.0
    assert by["onnxruntime", 2]["speedup_vs_torch"] == pytest.approx(
        by["onnxruntime", 2]["throughput_ips"] / by["torch", 2]["throughput_ips"])
    assert by["onnxruntime", 1]["speedup_vs_onnx"] == 1.0
    assert by["torch", 2]["speedup_vs_onnx"] == pytest.approx(
        by["torch", 2]["throughput_ips"] / by["onnxruntime", 2]["throughput_ips"])

    peaks = {(p["library"], p["precision"]) for p in data["peaks"] if p["gflops_per_s"]}
    assert peaks == {("torch", "fp32"), ("onnxruntime", "fp32")}


def test_skipped_engines_are_listed_with_reasons(tiny_run):
    data, out, _ = tiny_run
    skipped = {s["engine"]: s for s in data["skipped"]}
    assert set(skipped) == {"trt-fp16", "trt-int8"}
    for s in skipped.values():
        assert s["variant"] == "t" and "GPU" in s["reason"]
    md = (out / "bench.md").read_text()
    assert "- trt-fp16 (t): TensorRT needs an NVIDIA GPU" in md


def test_pipeline_rows(tiny_run):
    data, _, _ = tiny_run
    assert len(data["pipeline"]) == 2
    for p in data["pipeline"]:
        assert p["status"] == "ok" and p["persons_per_image"] == 3 and p["images"] == 2
        assert 0.0 <= p["outside_engine_share"] < 1.0
        assert p["engine_ms_per_image"] <= p["total_ms_per_image"]
        assert p["persons_per_s"] == pytest.approx(3 * 1e3 / p["total_ms_per_image"])


def test_profile_gives_the_onnx_engine_s_time_by_op_type(tiny_run):
    data, out, _ = tiny_run
    [prof] = data["profiles"]  # the ONNX Runtime engine only, at the largest batch
    assert prof["engine"] == "tokenpose_bench-tiny_fp32.onnx" and prof["batch"] == 2 and prof["runs"] == 3
    ops = {o["op"]: o for o in prof["ops"]}
    # The attention block runs as one fused MultiHeadAttention node; no Softmax is left.
    assert ops["MultiHeadAttention"]["nodes"] == 1 and "Softmax" not in ops
    assert sum(o["ms"] for o in prof["ops"]) == pytest.approx(prof["total_ms"], rel=1e-6)
    assert sum(o["share"] for o in prof["ops"]) == pytest.approx(1.0)
    md = (out / "bench.md").read_text()
    assert "| MultiHeadAttention |" in md and "bench-tiny tokenpose_bench-tiny_fp32.onnx, batch 2" in md


def test_markdown_and_plot_files(tiny_run):
    _, out, res = tiny_run
    md = (out / "bench.md").read_text()
    assert "| variant | engine | precision | batch | p50 ms | p90 ms | p99 ms | images/s | x torch | x ONNX FP32 |" in md
    assert md.count("| bench-tiny |") >= 4 + 2  # speed rows and pipeline rows
    assert "| t | 5.82 | 5.8 | 1.29 | 1.3 | 3.20 |" in md  # the paper's table row beside true FLOPs
    assert "Machine: CPU:" in md and "torch " in md
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| bench-tiny | tiny.pth | fp32 | 1 |" in res.output  # the same table on stdout


def test_named_torch_engine_is_made_on_demand(tmp_path):
    """`--engines torch` writes seeded weights into the work dir and reuses them on the next run."""
    args = ["--variant", "t", "--engines", "torch", "--device", "cpu", "--batch", "1", "--warmup", "0",
            "--iters", "1", "--peak-size", "64", "--work-dir", str(tmp_path), "--json", str(tmp_path / "r.json"),
            "--quiet"]
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    weights = tmp_path / "t" / "tokenpose_t_random0.pth"
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert row["engine"] == "torch" and row["status"] == "ok" and row["artifact"] == str(weights)
    assert row["true_gflops"] == pytest.approx(3.2, abs=0.05) and row["achieved_gflops_per_s"] > 0
    assert row["peak_fraction"] is not None


def test_cached_artifacts_must_cover_the_requested_run(tmp_path):
    # A cached model is reused only when it was made from the same weights and its batch range
    # (fixed in an engine profile) covers the largest batch asked for.
    from tokenpose.bench.preparation import cached_artifact as _cached_artifact
    from tokenpose.manifest import BatchRange, sha256_file
    from tokenpose.export.pipeline import ExportOptions, export_model

    weights = tmp_path / "w.pth"
    save_weights(TokenPose("t"), weights, variant="t")
    summary = export_model(
        ExportOptions(variant="t", out_dir=tmp_path, checkpoint=weights, batch=BatchRange(1, 2, 4),
                      simplify=False, verify_batches=(1,)),
        log=lambda _m: None,
    )
    onnx = summary.artifacts[0].path
    sha = sha256_file(weights)
    assert _cached_artifact(onnx, sha, BenchSettings(batches=[1, 4]))
    assert not _cached_artifact(onnx, sha, BenchSettings(batches=[1, 8]))
    assert not _cached_artifact(onnx, "0" * 64, BenchSettings(batches=[1]))



def test_pipeline_scenes_from_coco_json_and_synthetic(tmp_path):
    """--pipeline-data names real images and boxes; without it the scenes are seeded synthetic ones."""
    from tokenpose.bench.pipeline import pipeline_scenes, synthetic_scenes

    coco_json = Path(__file__).parent / "fixtures" / "coco_mini" / "annotations" / "person_keypoints_mini.json"
    for scenes in (pipeline_scenes(coco_json, persons=5, count=2), synthetic_scenes(persons=5, count=2)):
        assert len(scenes) == 2
        for image, boxes in scenes:
            h, w = image.shape[:2]
            assert image.dtype == np.uint8 and image.shape[2] == 3 and boxes.shape == (5, 4)
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] >= 2).all()
            assert (boxes[:, 0] + boxes[:, 2] <= w).all() and (boxes[:, 1] + boxes[:, 3] <= h).all()
    first, second = synthetic_scenes(persons=5, count=1, seed=3), synthetic_scenes(persons=5, count=1, seed=3)
    assert np.array_equal(first[0][0], second[0][0]) and np.array_equal(first[0][1], second[0][1])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(BenchError, match="empty.json: no person boxes"):
        pipeline_scenes(empty, persons=1, count=1)


def test_emulated_precision_is_skipped_unless_asked_and_then_marked(tmp_path, monkeypatch):
    """bf16 on a CPU without AVX512-BF16/AMX (an AVX2 CPU's flags, injected) is emulated: skipped with the
    reason by default, timed and marked with --emulated."""
    from tokenpose.engines import torch_engine

    monkeypatch.setattr(torch_engine, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    args = ["--variant", "t", "--engines", "torch-bf16", "--device", "cpu", "--batch", "1", "--warmup", "0",
            "--iters", "1", "--peak-size", "64", "--work-dir", str(tmp_path), "--quiet"]
    res = run_cli(*args, "--json", str(tmp_path / "default.json"))
    assert res.exit_code == 0, res.output
    (skipped,) = json.loads((tmp_path / "default.json").read_text())["skipped"]
    assert skipped["engine"] == "torch-bf16" and "emulated" in skipped["reason"] and "--emulated" in skipped["reason"]

    with pytest.warns(UserWarning, match="bf16 on this CPU is emulated"):
        res = run_cli(*args, "--emulated", "--json", str(tmp_path / "asked.json"), "--markdown", str(tmp_path / "a.md"))
    assert res.exit_code == 0, res.output
    (row,) = json.loads((tmp_path / "asked.json").read_text())["rows"]
    assert row["engine"] == "torch-bf16" and row["status"] == "ok" and row["emulated"] is True
    assert "| t | torch-bf16 | bf16 (emulated) | 1 |" in (tmp_path / "a.md").read_text()


def test_native_precision_and_the_compiled_and_aoti_engines_are_named(tmp_path, monkeypatch):
    from tokenpose.bench.preparation import _load_options, _skip_reason
    from tokenpose.bench.settings import ENGINES
    from tokenpose.engines import torch_engine
    from tokenpose.models.config import get_config

    monkeypatch.setattr(torch_engine, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    settings = BenchSettings(device="cpu")
    assert _skip_reason(ENGINES["torch-bf16"], settings) is None  # native here: timed by default
    assert "emulated" in _skip_reason(ENGINES["torch-fp16"], settings)  # no AVX512-FP16 / AMX-FP16
    assert _load_options(ENGINES["torch-compile"], get_config("t"), settings)["compile"] is True
    assert _load_options(ENGINES["torch"], get_config("t"), settings)["compile"] is False
    assert ENGINES["aoti"].suffix == ".pt2" and _skip_reason(ENGINES["aoti"], settings) is None
