"""Training core: loss, one optimizer step, checkpoints (official layout), HRNet init, CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import random

import numpy as np
import pytest
import torch
from conftest import COCO_MINI, manifest
from typer.testing import CliRunner

from tokenpose import create_model
from tokenpose.errors import CheckpointError, TokenPoseError
from tokenpose.models.checkpoints import (
    HRNET_PRETRAINED_PREFIXES,
    expected_official_shapes,
    load_hrnet_imagenet,
    read_checkpoint,
    to_official_state_dict,
)
from tokenpose.models.config import VARIANTS
from tokenpose.training.checkpointing import (
    model_config_from_checkpoint,
    read_metrics,
    rng_state,
    set_rng_state,
)
from tokenpose.training.config import TrainConfig
from tokenpose.training.loss import JointsMSELoss
from tokenpose.training.trainer import Trainer

TINY = dataclasses.replace(
    VARIANTS["t"], name="t-tiny", input_hw=(64, 48), heatmap_hw=(16, 12), patch_hw=(8, 6),
    depth=1, heads=4, dim=64, mlp_hidden=128, head_hidden=32,
)


@pytest.fixture
def one_thread():
    """One torch thread: much faster than two on a small shared CPU, and restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = {"variant": TINY, "data_root": COCO_MINI, "out": tmp_path / "run", "epochs": 1, "batch_size": 4,
            "workers": 0, "max_images": 8, "progress": False, "device": "cpu"}
    base.update(kw)
    return TrainConfig(**base)


# ----- loss -----


def test_loss_matches_hand_computation():
    # 1 image, 2 joints, 1x2 maps: joint 0 weighted 1, joint 1 weighted 0.
    pred = torch.tensor([[[[1.0, 2.0]], [[5.0, 5.0]]]])
    gt = torch.tensor([[[[0.0, 0.0]], [[0.0, 1.0]]]])
    w = torch.tensor([[[1.0], [0.0]]])
    # per joint 0.5 * mean(((p - g) * w)^2): joint 0 -> 0.5 * (1 + 4) / 2 = 1.25, joint 1 -> 0
    assert JointsMSELoss()(pred, gt, w).item() == pytest.approx((1.25 + 0.0) / 2)
    # unweighted: joint 1 -> 0.5 * (25 + 16) / 2 = 10.25
    assert JointsMSELoss(use_target_weight=False)(pred, gt, w).item() == pytest.approx((1.25 + 10.25) / 2)


def test_loss_matches_official_per_joint_loop():
    g = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(3, 5, 4, 6, generator=g), torch.rand(3, 5, 4, 6, generator=g)
    w = (torch.rand(3, 5, 1, generator=g) > 0.3).float()
    expected = 0.0
    for j in range(5):  # the official loop: 0.5 * MSE(mean) of the weighted maps, averaged over joints
        p, t = pred[:, j].reshape(3, -1), gt[:, j].reshape(3, -1)
        expected += 0.5 * ((p * w[:, j] - t * w[:, j]) ** 2).mean().item()
    assert JointsMSELoss()(pred, gt, w).item() == pytest.approx(expected / 5, rel=1e-6)
    with pytest.raises(ValueError, match="target_weight"):
        JointsMSELoss()(pred, gt, torch.ones(3, 4, 1))


# ----- one step -----


def test_one_step_lowers_loss_on_a_real_batch(tmp_path, one_thread):
    trainer = Trainer(tiny_config(tmp_path, seed=3))
    batch = next(iter(trainer._loader(0, 0)))
    assert batch["image"].shape == (4, 3, 64, 48) and batch["target"].shape == (4, 17, 16, 12)
    assert batch["target_weight"].shape == (4, 17, 1) and batch["target_weight"].sum() > 0

    def loss_now() -> float:
        with torch.no_grad():
            return trainer.criterion(trainer.model(batch["image"]), batch["target"], batch["target_weight"]).item()

    before = loss_now()
    step_loss = trainer.train_step(batch)
    assert step_loss == pytest.approx(before, rel=1e-5)  # the step reports the loss it descended
    after = loss_now()
    assert after < before * 0.98, (before, after)


def test_bf16_autocast_step_runs_on_cpu(tmp_path, one_thread):
    trainer = Trainer(tiny_config(tmp_path, amp="bf16"))
    batch = next(iter(trainer._loader(0, 0)))
    weights_before = trainer.model.head[-1].weight.detach().clone()
    loss = trainer.train_step(batch)
    assert np.isfinite(loss)
    assert not torch.equal(weights_before, trainer.model.head[-1].weight)
    assert trainer.model.head[-1].weight.dtype == torch.float32  # autocast, not a bf16 model


def test_grad_clip_bounds_the_update(tmp_path, one_thread):
    trainer = Trainer(tiny_config(tmp_path, grad_clip=1e-6, lr=1.0))
    batch = next(iter(trainer._loader(0, 0)))
    trainer.train_step(batch)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in trainer.model.parameters() if p.grad is not None))
    assert total.item() <= 1e-6 * 1.01


# ----- checkpoints -----


def test_checkpoint_round_trip_has_the_official_key_set(tmp_path, one_thread):
    result = Trainer(tiny_config(tmp_path, epochs=2, max_images=8)).fit()
    assert result.steps == 4 and result.epochs == 2
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "final.pth", "last.pth", "metrics.jsonl"]
    last = read_checkpoint(out / "last.pth")
    assert set(last["state_dict"]) == set(expected_official_shapes(TINY))
    assert last["epoch"] == 2 and last["step"] == 4
    assert {"optimizer", "scheduler", "scaler", "rng", "config", "model_config"} <= set(last)
    for name in ("last.pth", "final.pth"):
        model = create_model(TINY, checkpoint=out / name)
        ours = to_official_state_dict(model)
        assert all(torch.equal(ours[k], last["state_dict"][k]) for k in ours)
    assert model_config_from_checkpoint(last) == TINY
    rows = read_metrics(out / "metrics.jsonl")
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 2), (1, 4)]
    assert json.loads((out / "config.json").read_text())["variant"]["model_config"]["name"] == "t-tiny"


def test_checkpoint_of_a_real_variant_matches_the_official_manifest(tmp_path, one_thread):
    trainer = Trainer(TrainConfig(variant="t", data_root=COCO_MINI, out=tmp_path / "t", max_images=2,
                                  workers=0, progress=False, device="cpu"))
    path = trainer.save_checkpoint()
    official = {e["key"]: tuple(e["shape"]) for e in manifest("t")["entries"]}
    sd = read_checkpoint(path)["state_dict"]
    assert {k: tuple(v.shape) for k, v in sd.items()} == official
    create_model("t", checkpoint=path)


def test_fresh_run_refuses_to_overwrite_and_resume_checks_the_model(tmp_path, one_thread):
    Trainer(tiny_config(tmp_path, max_steps=1)).fit()
    with pytest.raises(TokenPoseError, match="already holds a run"):
        Trainer(tiny_config(tmp_path))
    other = dataclasses.replace(TINY, depth=2)
    with pytest.raises(CheckpointError, match="depth"):
        Trainer(tiny_config(tmp_path, variant=other, resume=True))
    resumed = Trainer(tiny_config(tmp_path, resume=True))
    assert resumed.state.step == 1 and resumed.state.epoch_samples == 4


def test_resume_refuses_changed_run_settings_and_warns_about_harmless_ones(tmp_path, one_thread, recwarn):
    Trainer(tiny_config(tmp_path, epochs=2, max_steps=1, seed=3)).fit()
    with pytest.raises(CheckpointError) as err:
        Trainer(tiny_config(tmp_path, resume=True, seed=4, lr=2e-3, milestones=(1,), workers=1))
    msg = str(err.value)
    assert "other settings (seed 3 -> 4; lr 0.001 -> 0.002; milestones [200, 260] -> [1])" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match=r"batch_size 4 -> 32; max_images 8 -> 6"):
        Trainer(tiny_config(tmp_path, resume=True, seed=3, batch_size=None, max_images=6))
    with pytest.raises(CheckpointError, match="differs in depth"):  # the model is compared first
        Trainer(tiny_config(tmp_path, resume=True, seed=4, variant=dataclasses.replace(TINY, depth=2)))
    assert not recwarn.list

    # More epochs, clipping, other workers or max_steps: resumable; the first two are mentioned.
    with pytest.warns(UserWarning, match=r"changed settings \(epochs 2 -> 5; grad_clip None -> 1.0\)"):
        resumed = Trainer(tiny_config(tmp_path, resume=True, seed=3, epochs=5, grad_clip=1.0, workers=1, max_steps=9))
    assert resumed.state.step == 1


def test_rng_state_survives_a_weights_only_checkpoint():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_load_hrnet_imagenet_loads_only_the_listed_stages(tmp_path):
    model = create_model("b")
    own_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    imagenet = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 7
                for k, v in own_before.items()}
    imagenet["stage4.0.branches.0.0.conv1.weight"] = torch.randn(32, 32, 3, 3)  # not in TokenPose-B
    imagenet["classifier.weight"] = torch.randn(10, 20)
    imagenet["stage3.3.fuse_layers.1.0.0.0.weight"] = torch.randn(64, 32, 3, 3)  # fuse dropped by TokenPose
    path = tmp_path / "hrnet_w32_imagenet.pth"
    torch.save({f"module.{k}": v for k, v in imagenet.items()}, path)

    loaded = load_hrnet_imagenet(model, path)
    own = model.backbone.state_dict()
    assert set(loaded) == set(own)  # every backbone key is in one of the listed stages
    assert all(k.split(".")[0] in HRNET_PRETRAINED_PREFIXES for k in loaded)
    assert all(torch.equal(own[k], imagenet[k]) for k in own)
    assert not torch.equal(own["conv1.weight"], own_before["conv1.weight"])

    torch.save({"stage2.0.branches.0.0.conv1.weight": torch.randn(48, 48, 3, 3)}, path)  # a W48 tensor
    with pytest.raises(CheckpointError, match="HRNet-W32"):
        load_hrnet_imagenet(model, path)
    torch.save({"fc.weight": torch.randn(3, 3)}, path)
    with pytest.raises(CheckpointError, match="no HRNet key"):
        load_hrnet_imagenet(model, path)
    with pytest.raises(CheckpointError, match="HRNet variants"):
        load_hrnet_imagenet(create_model(TINY), path)


# ----- config and CLI -----


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown variant 'x'"):
        TrainConfig(variant="x")
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="cannot train on mpii"):
        TrainConfig(variant="t", dataset="mpii")
    with pytest.raises(ValueError, match="validation during training supports COCO only"):
        TrainConfig(variant="l-d6-mpii", val_ann_file="val.json")  # on every rank, before any data is read
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Trainer(tiny_config(tmp_path, amp="fp16"))
    cfg = tiny_config(tmp_path, milestones=(3, 5))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig().per_process_batch_size == 32 and TrainConfig(variant="s-v2").per_process_batch_size == 12


def test_cli_train_end_to_end_and_errors(tmp_path, one_thread):
    from tokenpose.cli.main import app

    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(app, ["train", "--variant", "t", "--data-root", str(COCO_MINI), "--out", str(out),
                            "--epochs", "1", "--batch-size", "2", "--max-steps", "1", "--workers", "0",
                            "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert read_checkpoint(out / "last.pth")["step"] == 1
    create_model("t", checkpoint=out / "final.pth")

    r = runner.invoke(app, ["train", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "data root not found" in r.output
    r = runner.invoke(app, ["train", "--variant", "tt", "--data-root", str(COCO_MINI), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "unknown variant 'tt'" in r.output
    r = runner.invoke(app, ["train", "--data-root", str(COCO_MINI), "--out", str(out)])
    assert r.exit_code == 1 and "already holds a run" in r.output


def test_validation_adds_ap_to_metrics_and_writes_best(tmp_path, one_thread):
    ann = COCO_MINI / "annotations" / "person_keypoints_mini.json"
    result = Trainer(tiny_config(tmp_path, val_ann_file=ann)).fit()  # images found beside the json
    row = result.metrics[0]
    assert 0.0 <= row["AP"] <= 1.0 and {"AP50", "AP75", "AR"} <= set(row)
    best = read_checkpoint(tmp_path / "run" / "best.pth")
    assert best["AP"] == row["AP"] == result.best_ap
    create_model(TINY, checkpoint=tmp_path / "run" / "best.pth")


def test_mpii_root_trains(tmp_path, mpii_mini, one_thread):
    tiny_mpii = dataclasses.replace(TINY, name="t-tiny-mpii", dataset="mpii", input_hw=(64, 64),
                                    heatmap_hw=(16, 16), patch_hw=(8, 8))
    result = Trainer(tiny_config(tmp_path, variant=tiny_mpii, data_root=mpii_mini, max_images=None)).fit()
    assert result.steps == 2 and result.metrics[0]["images"] == 5
    assert read_checkpoint(tmp_path / "run" / "last.pth")["state_dict"]["transformer.keypoint_token"].shape == (1, 16, 64)
