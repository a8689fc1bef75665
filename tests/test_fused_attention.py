"""The fused CPU attention operator `tokenpose::attention` (tokenpose/csrc/attention_cpu.cpp) against
`scaled_dot_product_attention`: shapes, strides, head sizes, the fallback path, the model switch,
the engines' defaults and the build's error messages. The library is built once into the user's
cache (~20 s on a fresh machine) and reused."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from test_engines import TINY
from torch.nn import functional as F

from tokenpose.errors import TokenPoseError
from tokenpose.models import create_model, fused_attention

FAST = fused_attention.unavailable_reason() is None  # AVX-512 here: the kernel, not its fallback, runs


@pytest.fixture(scope="module", autouse=True)
def library():
    return fused_attention.ensure_loaded()


def _qkv(batch, heads, queries, keys, head, seed=0, packed=False):
    g = torch.Generator().manual_seed(seed)
    if packed:  # views of one (B, S, 3, heads, head) tensor, as the model's qkv projection gives them
        qkv = torch.randn(batch, keys, 3, heads, head, generator=g).permute(2, 0, 3, 1, 4)
        return qkv[0][:, :, :queries], qkv[1], qkv[2]
    return (torch.randn(batch, heads, queries, head, generator=g), torch.randn(batch, heads, keys, head, generator=g),
            torch.randn(batch, heads, keys, head, generator=g))


@pytest.mark.parametrize("batch,heads,queries,keys,head,packed", [
    (2, 8, 97, 97, 24, True),    # S-v2's head size, a query count that leaves a partial block of 16
    (1, 8, 17, 300, 24, False),  # the pruned last layer: the keypoint tokens query every token
    (3, 4, 33, 33, 12, True),    # T
    (2, 3, 5, 70, 16, False),    # L
    (2, 2, 16, 3, 8, False),     # fewer keys than one group of four
    (2, 2, 9, 9, 20, False),     # no kernel for 20: the fallback inside the operator
])
def test_operator_matches_sdpa(batch, heads, queries, keys, head, packed):
    q, k, v = _qkv(batch, heads, queries, keys, head, packed=packed)
    scale = head ** -0.5 * 1.7
    got = torch.ops.tokenpose.attention(q, k, v, scale)
    want = F.scaled_dot_product_attention(q, k, v, scale=scale)
    assert got.shape == want.shape == (batch, heads, queries, head)
    # Laid out as (B, L, H, D): the caller's transpose(1, 2).reshape(B, L, H * D) costs nothing.
    assert got.transpose(1, 2).is_contiguous()
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-6)


@pytest.mark.skipif(not FAST, reason=f"fused kernel not used here: {fused_attention.unavailable_reason()}")
def test_kernel_runs_and_the_environment_forces_the_fallback(monkeypatch):
    q, k, v = _qkv(2, 8, 40, 120, 24)
    want = F.scaled_dot_product_attention(q, k, v, scale=0.1)
    fast = torch.ops.tokenpose.attention(q, k, v, 0.1)
    assert not torch.equal(fast, want)  # its own arithmetic (exp polynomial, summation order)...
    assert (fast - want).abs().max() <= 2e-6  # ...to float32 rounding
    monkeypatch.setenv("TOKENPOSE_ATTENTION_FALLBACK", "1")
    slow = torch.ops.tokenpose.attention(q, k, v, 0.1)
    assert torch.equal(slow, want) and slow.transpose(1, 2).is_contiguous()


def test_operator_rejects_mismatched_inputs():
    q, k, v = _qkv(1, 2, 4, 6, 8)
    with pytest.raises(RuntimeError, match=r"must be \(batch, heads, tokens, head_size\)"):
        torch.ops.tokenpose.attention(q[0], k[0], v[0], 0.5)
    with pytest.raises(RuntimeError, match="differ"):
        torch.ops.tokenpose.attention(q, k, v[:, :, :5], 0.5)
    with pytest.raises(RuntimeError, match="does not match k"):
        torch.ops.tokenpose.attention(q[:, :1], k, v, 0.5)


def _tiny():
    """test_engines' tiny model with two layers: a full one and the pruned last one both attend."""
    return dataclasses.replace(TINY, name="tiny-t-2", depth=2)


def test_model_switch_keeps_heatmaps_and_training():
    torch.manual_seed(0)
    model = create_model(_tiny()).eval()
    x = torch.randn(3, 3, *model.config.input_hw)
    with torch.no_grad():
        want = model(x)
        assert model.use_fused_attention() is model and model.uses_fused_attention
        with model.using_fused_attention(False):  # a block through SDPA, the setting back after it
            assert not model.uses_fused_attention and torch.equal(model(x), want)
        assert model.uses_fused_attention
        got = model(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5)
    # With autograd on, the layers keep SDPA (the operator has no backward): training still works.
    model.train()
    model(x).square().mean().backward()
    assert model.keypoint_token.grad is not None and torch.isfinite(model.keypoint_token.grad).all()
    assert not model.use_fused_attention(False).uses_fused_attention


def test_torch_engine_uses_the_kernel_where_it_helps():
    from tokenpose.engines.torch_engine import TorchEngine

    torch.manual_seed(0)
    model = create_model(_tiny())
    auto = TorchEngine(model)
    plain = TorchEngine(model, fused_attention=False)
    assert auto.fused_attention is FAST and plain.fused_attention is False
    assert not model.uses_fused_attention  # the engine switched its own copy
    x = np.random.default_rng(0).standard_normal((2, 3, *model.config.input_hw)).astype(np.float32)
    np.testing.assert_allclose(auto(x), plain(x), rtol=0, atol=1e-5)
    assert TorchEngine(model, precision="bf16").fused_attention is False  # float32 only


def test_torch_engine_fused_attention_true_fails_clearly_where_it_cannot_run(monkeypatch):
    from tokenpose.engines import torch_engine

    monkeypatch.setattr(torch_engine, "unavailable_reason", lambda: "the CPU lacks AVX-512 (test)")
    with pytest.raises(TokenPoseError, match="fused_attention=True, but the kernel cannot be used here: the CPU lacks"):
        torch_engine.TorchEngine(create_model(_tiny()), fused_attention=True)
    assert torch_engine.TorchEngine(create_model(_tiny())).fused_attention is False


def test_build_reuses_the_cached_library(library):
    before = library.stat().st_mtime_ns
    assert fused_attention.build_library() == library and library.stat().st_mtime_ns == before
    assert fused_attention.loaded_library() == library


def test_build_names_the_missing_or_failing_compiler(tmp_path, monkeypatch):
    if fused_attention.unavailable_reason() and "x86-64" in fused_attention.unavailable_reason():
        pytest.skip("the kernel is not built on this architecture")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(fused_attention.FusedAttentionError, match="needs a C\\+\\+ compiler: .*no-such-compiler"):
        fused_attention.build_library(tmp_path / "ops")
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'attention_cpu.cpp:1: error: something broke' >&2\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    with pytest.raises(fused_attention.FusedAttentionError, match=r"failed \(exit 3\):\n.*something broke"):
        fused_attention.build_library(tmp_path / "ops")
    assert not [p for p in os.listdir(tmp_path / "ops")]  # no temp file, no half library left behind


def test_load_library_names_a_missing_file(tmp_path):
    with pytest.raises(fused_attention.FusedAttentionError, match="does not exist"):
        fused_attention.load_library(tmp_path / "gone.attention.so")


def test_a_failed_build_is_not_retried_by_every_engine(monkeypatch):
    calls = []

    def failing_build(**_kwargs):
        calls.append(1)
        raise fused_attention.FusedAttentionError("compiling attention_cpu.cpp with c++ failed (exit 1)")

    monkeypatch.setitem(fused_attention._state, "library", None)
    monkeypatch.setitem(fused_attention._state, "error", None)
    monkeypatch.setattr(fused_attention, "build_library", failing_build)
    for _ in range(2):
        with pytest.raises(fused_attention.FusedAttentionError, match="failed"):
            fused_attention.ensure_loaded()
    assert len(calls) == 1


def test_nan_inputs_give_nan_outputs_not_silent_numbers():
    q, k, v = _qkv(1, 2, 20, 30, 24)
    k[0, 1, 7, 3] = float("nan")  # one key element of head 1: every query of that head sees a NaN logit
    got = torch.ops.tokenpose.attention(q, k, v, 0.2)
    want = F.scaled_dot_product_attention(q, k, v, scale=0.2)
    assert torch.isnan(got[0, 1]).all() and torch.isnan(want[0, 1]).all()
    np.testing.assert_allclose(got[0, 0].numpy(), want[0, 0].numpy(), rtol=0, atol=2e-6)


def test_onnx_export_of_a_fused_model_writes_standard_attention():
    from tokenpose.export.onnx import export_onnx_model, op_counts

    model = create_model(_tiny()).use_fused_attention()
    counts = op_counts(export_onnx_model(model))
    assert counts.get("Softmax") == model.config.depth and not [op for op in counts if "attention" in op.lower()]
    assert model.uses_fused_attention  # switched back after the export


def test_export_cli_aoti_sdpa_asks_for_a_package_without_the_operator(monkeypatch, tmp_path):
    import typer
    from typer.testing import CliRunner

    from tokenpose.cli.export import command
    from tokenpose.export import pipeline

    app = typer.Typer(add_completion=False)
    app.command()(command)

    seen = []

    def fake_export(options, log):  # only what the CLI asks for is checked here
        seen.append(options)
        raise pipeline.ExportError("stop here")

    monkeypatch.setattr(pipeline, "export_model", fake_export)
    for flags, want in (([], None), (["--aoti-sdpa"], False)):
        CliRunner().invoke(app, ["--variant", "t", "--out", str(tmp_path), "--aoti", *flags])
        assert seen and seen[-1].aoti and seen[-1].aoti_fused_attention is want
