"""tokenpose.explain and `tokenpose explain`: attention read-out, the paper's §4 figures, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import COCO_MINI
from typer.testing import CliRunner

from tokenpose import create_model
from tokenpose.cli.explain import command, parse_box
from tokenpose.cli.main import app
from tokenpose.data.transforms import read_image
from tokenpose.explain import (
    OUTPUT_FILES,
    capture_attention,
    explain_image,
    keypoint_to_keypoint,
    keypoint_to_visual,
    layer_labels,
    record_attention,
    resolve_keypoints,
    token_similarity,
    top_constraints,
    write_explanation,
)
from tokenpose.explain.attention import attention_probes
from tokenpose.explain.figures import (
    keypoint_to_keypoint_figure,
    keypoint_to_visual_figure,
)
from tokenpose.models.checkpoints import save_weights
from tokenpose.models.config import VARIANTS

IMAGE = COCO_MINI / "images" / "000000000785.jpg"  # 640x425, one person
BOX = (280.79, 44.73, 218.7, 346.68)  # its ground-truth box
BOX_ARG = ",".join(map(str, BOX))


def no_hooks_left(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.fixture(scope="module")
def model_t() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("t")


@pytest.fixture(scope="module")
def batch_t(model_t) -> torch.Tensor:
    from tokenpose.data.transforms import box_to_center_scale, preprocess_crops

    image = read_image(IMAGE)
    centers, scales = box_to_center_scale(np.array([BOX, (0, 0, 640, 425)]), model_t.config.aspect_ratio)
    return torch.from_numpy(preprocess_crops(image, centers, scales, model_t.config.input_hw))


@pytest.fixture(scope="module")
def checkpoint_t(model_t, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "t.pth"
    save_weights(model_t, path)
    return path


@pytest.fixture(scope="module")
def captured_t(model_t, batch_t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normal heatmaps, explained heatmaps, attention (L, 2, heads, N, N)) of the T model."""
    with torch.no_grad():
        normal = model_t(batch_t)
    return (normal, *capture_attention(model_t, batch_t))


def test_explained_forward_equals_normal_forward(model_t, batch_t, captured_t):
    normal, heatmaps, attention = captured_t
    # Recording computes the last layer for every token (the normal forward only for the keypoint
    # tokens the head reads): the same function, so equal up to float32 rounding.
    torch.testing.assert_close(heatmaps, normal, rtol=0, atol=1e-5)
    cfg = model_t.config
    n = cfg.num_joints + cfg.num_visual_tokens
    assert attention.shape == (cfg.total_layers, 2, cfg.heads, n, n)
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]), atol=1e-5, rtol=0)
    assert (attention >= 0).all()
    # The two crops differ, so the attention is read per image, not shared.
    assert not torch.allclose(attention[:, 0], attention[:, 1])
    # The read-out leaves nothing behind: the normal forward and exported graphs see no hooks.
    assert no_hooks_left(model_t)
    with torch.no_grad():
        assert torch.equal(model_t(batch_t), normal)


def test_hooks_removed_when_forward_fails(model_t):
    with pytest.raises(ValueError, match="expects images of shape"):
        capture_attention(model_t, torch.zeros(1, 3, 64, 64))
    assert no_hooks_left(model_t)


def test_head_average_and_views(model_t, batch_t, captured_t):
    cfg = model_t.config
    j, (gh, gw) = cfg.num_joints, cfg.token_grid_hw
    full = captured_t[2][:, :1]
    _, mean = capture_attention(model_t, batch_t[:1], average_heads=True)
    assert mean.shape == (cfg.total_layers, 1, 1, j + gh * gw, j + gh * gw)
    torch.testing.assert_close(mean[:, :, 0], full.mean(dim=2))

    visual = keypoint_to_visual(full, cfg)
    kk = keypoint_to_keypoint(full, j)
    assert visual.shape == (cfg.total_layers, 1, j, gh, gw)
    assert kk.shape == (cfg.total_layers, 1, j, j)
    # Grid cell (r, c) is visual token r * gw + c, which follows the J keypoint tokens.
    heads_mean = full.mean(dim=2)
    for layer, joint, r, c in ((0, 0, 0, 0), (5, 9, 3, 11), (11, 16, gh - 1, gw - 1)):
        assert visual[layer, 0, joint, r, c] == heads_mean[layer, 0, joint, j + r * gw + c]
    # A keypoint token's attention splits between keypoint and visual tokens and sums to 1.
    total = visual.sum(dim=(-1, -2)) + kk.sum(dim=-1)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
    # The same views from the head-averaged record.
    torch.testing.assert_close(keypoint_to_visual(mean[:, :, 0], cfg), visual)


def test_token_similarity_is_column_softmax_of_scaled_inner_products():
    tokens = torch.randn(1, 5, 16)
    sim = token_similarity(tokens)
    k = tokens[0].double().numpy()
    logits = k @ k.T / 4.0  # sqrt(16)
    expected = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(sim.numpy(), expected, rtol=1e-5)
    torch.testing.assert_close(sim.sum(dim=0), torch.ones(5))
    assert not torch.allclose(sim.sum(dim=1), torch.ones(5))  # rows are not normalised


def test_top_constraints_exclude_self_and_order():
    names = ("a", "b", "c", "d")
    kk = torch.tensor([
        [0.9, 0.1, 0.3, 0.2],
        [0.05, 0.8, 0.01, 0.02],
        [0.45, 0.4, 0.9, 0.1],
        [0.0, 0.3, 0.2, 0.5],
    ])
    table = top_constraints(kk, names)
    assert [e["keypoint"] for e in table] == list(names)
    assert [[c["keypoint"] for c in e["constraints"]] for e in table] == [
        ["c", "d"], ["a", "d"], ["a", "b"], ["b", "c"],
    ]
    assert table[0]["constraints"][0]["score"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="k must be"):
        top_constraints(kk, names, k=4)


def test_three_encoder_layers_numbered_across_encoders():
    cfg = VARIANTS["l-d6"]
    labels = layer_labels(cfg)
    assert labels == [
        "layer 1 (enc 1.1)", "layer 2 (enc 1.2)", "layer 3 (enc 2.1)",
        "layer 4 (enc 2.2)", "layer 5 (enc 3.1)", "layer 6 (enc 3.2)",
    ]
    assert layer_labels(VARIANTS["s-v2"])[-1] == "layer 12"

    # Three encoders of two layers like l-d6, on a pixel backbone so the test takes a second.
    tiny = dataclasses.replace(cfg, name="l-tiny", backbone="pixels", patch_hw=(16, 12), dim=96,
                               mlp_hidden=192, paper_params_m=None, paper_gflops=None)
    assert layer_labels(tiny) == labels
    torch.manual_seed(0)
    model = create_model(tiny)
    x = torch.randn(1, 3, *tiny.input_hw)
    # Hook encoder 2 layer 1 on its own: it must be global layer index 2 of the capture.
    seen = []
    handle = model.encoders[1][0].attn.probe.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    try:
        heatmaps, attention = capture_attention(model, x)
    finally:
        handle.remove()
    assert len(attention_probes(model)) == attention.shape[0] == 6
    assert torch.equal(attention[2], seen[0])
    assert not torch.equal(attention[1], seen[0])
    with torch.no_grad():
        torch.testing.assert_close(heatmaps, model(x), rtol=0, atol=1e-5)
    assert no_hooks_left(model)

    image = read_image(IMAGE)
    expl = explain_image(model, image, BOX)
    assert expl.visual.shape == (6, 17, *tiny.token_grid_hw)
    assert expl.constraints[0]["keypoint"] == "nose"
    fig = keypoint_to_keypoint_figure(expl)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == labels
    fig = keypoint_to_visual_figure(expl, [15])
    assert "layer 6 (enc 3.2)\nmax" in " ".join(ax.get_title() for ax in fig.axes)


def test_record_attention_collects_every_call(model_t, batch_t):
    with torch.no_grad(), record_attention(model_t, average_heads=True) as record:
        model_t(batch_t[:1])
        model_t(batch_t[1:])
    assert all(len(calls) == 2 for calls in record.calls)
    assert record.stacked(0).shape[1] == 1
    assert not torch.equal(record.stacked(0), record.stacked(1))
    assert no_hooks_left(model_t)


def test_explain_image_outputs_readable(model_t, tmp_path):
    image = read_image(IMAGE)
    expl = explain_image(model_t, image, BOX)
    cfg = model_t.config
    assert expl.crop_rgb.shape == (*cfg.input_hw, 3) and expl.crop_rgb.dtype == np.uint8
    assert expl.heatmaps.shape == (cfg.num_joints, *cfg.heatmap_hw)
    assert expl.keypoint.shape == (cfg.total_layers, cfg.num_joints, cfg.num_joints)
    np.testing.assert_allclose(expl.similarity.sum(axis=0), 1.0, rtol=1e-5)
    assert ((expl.keypoints_crop >= 0) & (expl.keypoints_crop <= np.array(cfg.input_hw[::-1]) - 1)).all()

    paths = write_explanation(expl, tmp_path / "out", resolve_keypoints("nose,left_ankle", cfg))
    assert set(paths) == set(OUTPUT_FILES)
    for kind in ("visual", "keypoint", "similarity"):
        png = cv2.imread(str(paths[kind]))
        assert png is not None and min(png.shape[:2]) > 400, kind
        assert png.std() > 10, kind  # not a blank canvas
    data = json.loads(paths["constraints"].read_text())
    assert data["variant"] == "t" and data["layer"] == "layer 12"
    assert len(data["keypoints"]) == cfg.num_joints
    for entry in data["keypoints"]:
        assert len(entry["constraints"]) == 2
        assert entry["keypoint"] not in [c["keypoint"] for c in entry["constraints"]]
        assert entry["constraints"][0]["score"] >= entry["constraints"][1]["score"] > 0


def test_whole_image_without_box_and_layer_subset(model_t):
    image = read_image(IMAGE)
    expl = explain_image(model_t, image)
    assert expl.box_xywh == (0.0, 0.0, 640.0, 425.0)
    fig = keypoint_to_visual_figure(expl, [0, 16], layers=[1, 11])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == [
        f"prediction ({expl.confidences[0]:.2f})",
        f"layer 2\nmax {expl.visual[1, 0].max():.3f}",
        f"layer 12\nmax {expl.visual[11, 0].max():.3f}",
    ]
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()][:2] == ["nose", "right ankle"]


def test_resolve_keypoints():
    cfg = VARIANTS["t"]
    assert resolve_keypoints("nose, 15,right_ankle", cfg) == [0, 15, 16]
    assert resolve_keypoints("all", cfg) == list(range(17))
    assert [cfg.keypoint_names[i] for i in resolve_keypoints(None, cfg)] == [
        "nose", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_ankle", "right_ankle",
    ]
    assert len(resolve_keypoints(None, VARIANTS["l-d6-mpii"])) == 7
    with pytest.raises(ValueError, match="unknown keypoint 'elbow'"):
        resolve_keypoints("elbow", cfg)
    with pytest.raises(ValueError, match="out of range"):
        resolve_keypoints("17", cfg)


def test_parse_box():
    assert parse_box(" 1, 2.5,3,4 ") == (1.0, 2.5, 3.0, 4.0)
    assert parse_box(None) is None
    for bad in ("1,2,3", "1,2,3,4,5", "a,b,c,d", "1,2,nan,4", ""):
        with pytest.raises(ValueError, match="four numbers"):
            parse_box(bad)


def test_cli_writes_four_outputs(checkpoint_t, tmp_path):
    out = tmp_path / "explain"
    result = CliRunner().invoke(app, [
        "explain", str(IMAGE), "--checkpoint", str(checkpoint_t), "--variant", "t",
        "--box", BOX_ARG, "--keypoints", "left_wrist", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "Top-2 constraints" in result.output and "right_ankle" in result.output
    for name in OUTPUT_FILES.values():
        assert (out / name).is_file(), name
    assert cv2.imread(str(out / OUTPUT_FILES["visual"])) is not None
    assert len(json.loads((out / OUTPUT_FILES["constraints"]).read_text())["keypoints"]) == 17


TINY = dataclasses.replace(
    VARIANTS["t"], name="t-tiny", input_hw=(128, 96), heatmap_hw=(32, 24), depth=3, heads=4, dim=64,
    mlp_hidden=128, head_hidden=48, paper_params_m=None, paper_gflops=None,
)


def test_cli_reads_architecture_from_training_checkpoint(tmp_path):
    """A training checkpoint records `model_config` (the overfit benchmark's t-mini is no variant)."""
    torch.manual_seed(1)
    path = tmp_path / "tiny.pth"
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TINY).items()}
    save_weights(create_model(TINY), path, model_config=config)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", str(IMAGE), "-c", str(path), "-o", str(out), "-k", "all"])
    assert result.exit_code == 0, result.output
    assert "whole image" in result.output
    data = json.loads((out / OUTPUT_FILES["constraints"]).read_text())
    assert data["variant"] == "t-tiny" and data["layer"] == "layer 3"
    assert cv2.imread(str(out / OUTPUT_FILES["similarity"])) is not None

    result = CliRunner().invoke(app, ["explain", str(IMAGE), "-c", str(path), "-v", "t-mini", "-o", str(out)])
    assert result.exit_code == 1 and "holds variant 't-tiny', not 't-mini'" in result.output
    result = CliRunner().invoke(app, ["explain", str(IMAGE), "-c", str(path), "-v", "t", "-b", BOX_ARG])
    assert result.exit_code == 1 and "does not fit TokenPose 't'" in result.output


def test_cli_variant_from_key_shapes_or_clear_error(checkpoint_t, tmp_path):
    # No metadata: a registered variant is recognised by its key shapes, as the engines do.
    out = tmp_path / "t"
    result = CliRunner().invoke(app, ["explain", str(IMAGE), "-c", str(checkpoint_t), "-b", BOX_ARG, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / OUTPUT_FILES["constraints"]).read_text())["variant"] == "t"
    # A custom architecture saved without its config cannot be identified.
    tiny = create_model(dataclasses.replace(VARIANTS["t"], name="t-anon", depth=1))
    save_weights(tiny, tmp_path / "anon.pth")
    result = CliRunner().invoke(app, ["explain", str(IMAGE), "-c", str(tmp_path / "anon.pth"), "-b", BOX_ARG])
    assert result.exit_code == 1 and "cannot tell which variant" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--box", "1,2,3"], "--box must be four numbers x,y,w,h"),
        (["--box", "10,10,-5,20"], "must have positive width and height"),
        (["--box", "700,10,50,50"], "lies outside the 640x425 image"),
        (["--box", BOX_ARG, "--keypoints", "elbow"], "unknown keypoint 'elbow'"),
    ],
)
def test_cli_bad_arguments(checkpoint_t, tmp_path, args, message):
    result = CliRunner().invoke(app, [
        "explain", str(IMAGE), "-c", str(checkpoint_t), "-v", "t", "-o", str(tmp_path), *args,
    ])
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("content", "message"), [(b"not an image", "not in a format"), (b"", "is empty")])
def test_cli_unreadable_image(checkpoint_t, tmp_path, content, message):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    args = ["explain", str(bad), "-c", str(checkpoint_t), "-v", "t", "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert message in result.output and "bad.jpg" in result.output


def test_cli_missing_image(checkpoint_t, tmp_path):
    result = CliRunner().invoke(app, ["explain", str(tmp_path / "nope.png"), "-c", str(checkpoint_t), "-v", "t"])
    assert result.exit_code == 1
    assert "image file not found" in result.output


def test_command_is_registered():
    assert command.__doc__ and "Table 8" in command.__doc__
