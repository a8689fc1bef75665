"""Model zoo: variants, parameter and FLOP counts, checkpoint loading and its errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import REFERENCE_NAMES, filled_official_state_dict, manifest
from typer.testing import CliRunner

from tokenpose import create_model, list_variants
from tokenpose.cli.main import app
from tokenpose.errors import CheckpointError, InputShapeError
from tokenpose.models.config import VARIANTS
from tokenpose.models.checkpoints import (
    expected_official_shapes,
    read_checkpoint,
    save_weights,
)
from tokenpose.models.complexity import measure

# Reference §4: the official summary tool's "GFLOPs" and FlopCounterMode FLOPs (1e9), batch 1.
OFFICIAL_SUMMARY_GFLOPS = {
    "t": 1.292, "s-v1": 2.226, "s-v2": 11.618, "b": 5.655, "l-d6": 9.064,
    "l-d24": 10.984, "l-d24-384": 22.138, "l-d6-mpii": 11.864,
}
OFFICIAL_TRUE_GFLOPS = {
    "t": 3.201, "s-v1": 5.452, "s-v2": 14.974, "b": 12.552, "l-d6": 19.733,
    "l-d24": 24.386, "l-d24-384": 48.021, "l-d6-mpii": 25.782,
}
# l-d6 (COCO) has no official config; reference §4 derived its count from L/D24 with depth 2.
OFFICIAL_PARAMS = {v: manifest(r)["params_trainable"] for v, r in REFERENCE_NAMES.items()} | {"l-d6": 20_815_776}


def test_variant_names():
    assert list_variants() == ["t", "s-v1", "s-v2", "b", "l-d6", "l-d24", "l-d24-384", "l-d6-mpii"]


@pytest.mark.parametrize("variant", list(OFFICIAL_PARAMS))
def test_parameter_count_and_flops(variant):
    c = measure(variant)
    assert c.params == OFFICIAL_PARAMS[variant]
    assert abs(c.gflops_paper_convention / OFFICIAL_SUMMARY_GFLOPS[variant] - 1) < 0.005
    assert abs(c.true_gflops / OFFICIAL_TRUE_GFLOPS[variant] - 1) < 0.001
    if c.paper_gflops is not None:  # the paper rounds to one decimal
        assert abs(c.gflops_paper_convention - c.paper_gflops) <= 0.05 + 1e-9
    assert round(c.params / 1e6, 1) == c.paper_params_m


def test_forward_l_d6_coco():
    model = create_model("l-d6")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 192))
    assert out.shape == (1, 17, 64, 48) and torch.isfinite(out).all()


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown variant 'xl'.*s-v2.*l-d6-mpii"):
        create_model("xl")


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "best_state_dict", "module_prefix"])
def test_checkpoint_wrappers_load(tmp_path, wrap):
    sd = filled_official_state_dict("t")
    obj = {
        "raw": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "best_state_dict": {"best_state_dict": sd, "perf": 0.5},
        "module_prefix": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    torch.save(obj, tmp_path / "ckpt.pth")
    model = create_model("t", checkpoint=tmp_path / "ckpt.pth")
    assert torch.equal(model.keypoint_token, sd["transformer.keypoint_token"])
    assert torch.equal(model.pos_embedding, sd["transformer.pos_embedding"])


def test_saved_checkpoint_has_official_keys_and_round_trips(tmp_path):
    model = create_model("s-v1")
    save_weights(model, tmp_path / "ours.pth", epoch=1)
    saved = read_checkpoint(tmp_path / "ours.pth")["state_dict"]
    official = {e["key"]: tuple(e["shape"]) for e in manifest("s_v1")["entries"]}
    assert {k: tuple(v.shape) for k, v in saved.items()} == official
    again = create_model("s-v1", checkpoint=tmp_path / "ours.pth")
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert not list(tmp_path.glob(".*.tmp"))


# S-v2 (stem backbone, whose official prefix is "features.") cut down to test in a second.
TINY_S = dataclasses.replace(VARIANTS["s-v2"], name="tiny-s", depth=1, dim=32, heads=2, mlp_hidden=64, head_hidden=32)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_plain_model_state_dict_loads(tmp_path, prefix):
    """`torch.save(model.state_dict())` (our module names), also from DDP / torch.compile wrappers."""
    torch.manual_seed(0)
    model = create_model(TINY_S)
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, tmp_path / "plain.pth")
    again = create_model(TINY_S, checkpoint=tmp_path / "plain.pth")
    x = torch.randn(1, 3, *TINY_S.input_hw)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_plain_state_dict_that_does_not_fit_says_how_it_was_read(tmp_path):
    sd = create_model(TINY_S).state_dict()
    del sd["head.3.bias"]
    torch.save(sd, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"own module names.*missing keys: features\.mlp_head\.3\.bias;"):
        create_model(TINY_S, checkpoint=tmp_path / "plain.pth")


def test_wrong_variant_checkpoint_names_the_right_one(tmp_path):
    torch.save(filled_official_state_dict("s_v1"), tmp_path / "s_v1.pth")
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: features\.pos_embedding.*variant 's-v1'"):
        create_model("s-v2", checkpoint=tmp_path / "s_v1.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: transformer\..*unexpected keys: features\."):
        create_model("t", checkpoint=tmp_path / "s_v1.pth")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = filled_official_state_dict("t")
    del sd["transformer.mlp_head.3.bias"]
    sd["transformer.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: transformer\.mlp_head\.3\.bias; unexpected keys: transformer\.extra"):
        create_model("t", checkpoint=tmp_path / "bad.pth")


def test_corrupt_truncated_and_missing_files(tmp_path):
    torch.save(filled_official_state_dict("t"), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all" * 10)
    (tmp_path / "empty.pth").write_bytes(b"")
    for name, pattern in [
        ("truncated.pth", "corrupt or truncated"),
        ("garbage.pth", "corrupt or truncated"),
        ("empty.pth", "empty"),
        ("absent.pth", "not found"),
    ]:
        with pytest.raises(CheckpointError, match=pattern) as info:
            create_model("t", checkpoint=tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [(1, 3, 128, 96), (1, 1, 256, 192), (3, 256, 192), (1, 4, 256, 192)])
def test_wrong_input_shape(shape):
    model = create_model("t")
    with pytest.raises(InputShapeError, match=r"expects images of shape \(B, 3, 256, 192\)"):
        model(torch.zeros(shape))


def test_expected_shapes_cover_every_variant():
    for v in list_variants():
        assert len(expected_official_shapes(v)) > 100


def test_zoo_cli_json_and_table():
    runner = CliRunner()
    result = runner.invoke(app, ["zoo", "--json", "-v", "t", "-v", "s-v2"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["variant"] for r in rows] == ["t", "s-v2"]
    assert rows[1]["params"] == 6_227_520
    table = runner.invoke(app, ["zoo", "-v", "b"])
    assert table.exit_code == 0 and "13.465M" in table.output and "5.655" in table.output
    bad = runner.invoke(app, ["zoo", "-v", "nope"])
    assert bad.exit_code == 1 and "valid variants" in bad.output


@pytest.mark.parametrize("variant", list_variants())
def test_model_config_dict_round_trip(variant):
    from tokenpose.models.config import VARIANTS, ModelConfig

    cfg = VARIANTS[variant]
    d = json.loads(json.dumps(cfg.to_dict()))  # plain types only
    assert isinstance(d["input_hw"], list)
    back = ModelConfig.from_dict(d)
    assert back == cfg and back.description == cfg.description
    assert all(isinstance(getattr(back, k), tuple) for k in ("input_hw", "heatmap_hw", "patch_hw"))
    with pytest.raises(ValueError, match="unknown ModelConfig field.*: colour"):
        ModelConfig.from_dict({**d, "colour": "red"})
    with pytest.raises(ValueError, match="missing: backbone, heads"):
        ModelConfig.from_dict({k: v for k, v in d.items() if k not in ("backbone", "heads")})
    del d["description"]  # fields with a default may be left out
    assert ModelConfig.from_dict(d) == cfg
