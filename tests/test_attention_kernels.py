"""benchmarks/attention_kernels.py: every attention form computes the same thing, and the script reports them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tokenpose.models.config import get_config

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "attention_kernels.py"
spec = importlib.util.spec_from_file_location("attention_kernels", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_layer_shape_of_s_v2_is_785_tokens_8_heads_of_24():
    assert bench.layer_shape(get_config("s-v2")) == (785, 8, 24)


def test_all_attention_forms_agree_with_a_numpy_reference():
    batch, tokens, heads, head, scale = 2, 19, 3, 4, 0.3
    forms = bench.kernels(batch, tokens, heads, head, scale, threads=1)
    assert {"ort MultiHeadAttention", "ort MatMul+Softmax+MatMul", "torch sdpa (flash)"} <= set(forms)
    assert any(name.startswith("tokenpose::attention") for name in forms)
    rng = np.random.default_rng(0)  # the script's seeded q, k, v, recomputed here
    q, k, v = (rng.standard_normal((batch, tokens, heads * head)).astype(np.float64)
               .reshape(batch, tokens, heads, head).transpose(0, 2, 1, 3) for _ in range(3))
    logits = q @ k.transpose(0, 1, 3, 2) * scale
    p = np.exp(logits - logits.max(-1, keepdims=True))
    want = ((p / p.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, heads * head)
    for name, (call, as_bsd) in forms.items():
        assert np.abs(as_bsd(call()) - want).max() < 1e-5, name


def test_script_writes_its_table(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--variant", "s-v2", "--batch", "1", "--rounds", "1",
                           "--threads", "1", "--head-sizes", "8,24", "--out", str(tmp_path / "att")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "att.json").read_text())
    kernels = {r["kernel"]: r for r in result["rows"]}
    assert "dense GEMM (qkv projection)" in kernels and "ort MultiHeadAttention" in kernels
    assert kernels["dense GEMM (qkv projection)"]["x_dense"] == 1.0
    assert all(r["gflops"] > 0 for r in kernels.values())
    assert kernels["dense GEMM, INT8 (MatMulInteger)"]["x_dense"] > 0
    sweep = result["head_size_sweep"]
    assert [r["head_dim"] for r in sweep["rows"]] == [8, 24] and all(r["median_ms"] > 0 for r in sweep["rows"])
    # Two points: the line goes through both.
    for r in sweep["rows"]:
        assert abs(sweep["fixed_ms"] + sweep["ms_per_head_dim"] * r["head_dim"] - r["median_ms"]) < 1e-6
    assert sweep["int8_gemm_speedup"] == pytest.approx(kernels["dense GEMM, INT8 (MatMulInteger)"]["x_dense"])
    text = (tmp_path / "att.md").read_text()
    assert "| ort MultiHeadAttention |" in text and "Least-squares line" in text
