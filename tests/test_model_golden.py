"""Numerical identity with the official implementation, on the reference golden files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    REFERENCE,
    REFERENCE_NAMES,
    fill_tensor,
    filled_official_state_dict,
    manifest,
)

from tokenpose import create_model
from tokenpose.models.checkpoints import (
    expected_official_shapes,
    load_official_state_dict,
)
from tokenpose.models.layers import sine_position_table


def golden_model(variant: str):
    model = create_model(variant)
    load_official_state_dict(model, filled_official_state_dict(REFERENCE_NAMES[variant]))
    return model.eval()


def test_fill_procedure_matches_reference_self_check():
    golden = np.load(REFERENCE / "golden_s_v2.npz")
    entries = {e["key"]: e for e in manifest("s_v2")["entries"]}
    for key, total, first in zip(golden["keys"], golden["fill_sum"], golden["fill_first"]):
        arr = fill_tensor(str(key), tuple(entries[str(key)]["shape"]), entries[str(key)]["dtype"])
        assert np.isclose(arr.astype(np.float64).sum(), total, rtol=1e-9, atol=1e-9), key
        assert arr.reshape(-1)[0] == first if arr.size else True


@pytest.mark.parametrize("variant", list(REFERENCE_NAMES))
def test_state_dict_layout_is_official(variant):
    entries = manifest(REFERENCE_NAMES[variant])["entries"]
    assert expected_official_shapes(variant) == {e["key"]: tuple(e["shape"]) for e in entries}


@pytest.mark.parametrize("variant", list(REFERENCE_NAMES))
def test_golden_heatmaps(variant):
    golden = np.load(REFERENCE / f"golden_{REFERENCE_NAMES[variant]}.npz")
    model = golden_model(variant)
    with torch.no_grad():
        out = model(torch.from_numpy(golden["input"].astype(np.float32))).numpy()
    assert out.shape == golden["heatmaps"].shape
    assert np.abs(out - golden["heatmaps"]).max() <= 1e-4


def test_golden_flip_test():
    golden = np.load(REFERENCE / "golden_s_v2_flip.npz")
    model = golden_model("s-v2")
    images = torch.from_numpy(golden["input"].astype(np.float32))
    with torch.no_grad():
        plain = model(images)
        flipped = model(images.flip(3))
    assert np.abs(flipped.numpy() - golden["heatmaps_flipped_input_raw"]).max() <= 1e-4
    # Flip test: reverse the width of the flipped output, swap left/right channels, average.
    back = flipped.flip(3)
    order = list(range(back.shape[1]))
    for a, b in golden["flip_pairs"]:
        order[a], order[b] = order[b], order[a]
    back = back[:, order]
    averaged = ((plain + back) * 0.5).numpy()
    assert np.abs(averaged - golden["heatmaps_flip_test"]).max() <= 1e-4


@pytest.mark.parametrize("variant", list(REFERENCE_NAMES))
def test_sine_table_matches_official(variant):
    golden = np.load(REFERENCE / f"golden_{REFERENCE_NAMES[variant]}.npz")
    cfg = create_model(variant).config
    ours = sine_position_table(cfg.token_grid_hw, cfg.dim).numpy()
    assert ours.shape == golden["official_sine_pos_embedding"].shape
    assert np.abs(ours - golden["official_sine_pos_embedding"]).max() <= 1e-6


def test_layer_norm_eps_is_official():
    # LN eps moves the goldens less than their tolerance, so check it by inspection (reference §2.4).
    model = create_model("l-d6")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-5 for m in norms)
    assert bns and all(m.eps == 1e-5 and m.momentum == 0.1 for m in bns)


@pytest.mark.parametrize("variant", ["t", "s-v2", "l-d6"])
def test_default_forward_equals_the_reference_form(variant):
    """The patch embedding as a strided convolution and the last layer computed for the keypoint
    tokens only give the official computation's heatmaps (same weights, float32 rounding)."""
    torch.manual_seed(0)
    model = create_model(variant)
    for p in model.parameters():  # non-zero biases and LayerNorm affines, as a trained model has
        p.data.add_(0.02 * torch.randn_like(p))
    x = torch.randn(2, 3, *model.config.input_hw)
    with torch.no_grad():
        fast = model(x)
        model.reference_form = True
        reference = model(x)
    assert fast.shape == reference.shape
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
