"""DDP with Gloo on CPU: averaged gradients equal a single process on the full batch, a
two-process `train()` equals a one-process run with the doubled batch, and a two-process run
resumed mid-epoch writes the metrics of an uninterrupted one.

TokenPose-T has no BatchNorm, so per-process batches do not change the forward pass and the
comparisons are exact up to float summation order.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from conftest import COCO_MINI

from tokenpose import create_model
from tokenpose.data.coco import CocoKeypoints
from tokenpose.errors import TokenPoseError
from tokenpose.models.checkpoints import read_checkpoint
from tokenpose.models.config import VARIANTS
from tokenpose.training.config import TrainConfig
from tokenpose.training.distributed import ResumableSampler
from tokenpose.training.loss import JointsMSELoss
from tokenpose.training.checkpointing import read_metrics
from tokenpose.training.trainer import Trainer, train

TINY = dataclasses.replace(
    VARIANTS["t"], name="t-tiny", input_hw=(64, 48), heatmap_hw=(16, 12), patch_hw=(8, 6),
    depth=1, heads=4, dim=64, mlp_hidden=128, head_hidden=32,
)
WORLD = 2


def run_ranks(fn, *args, timeout: float = 300.0) -> None:
    """Run fn(rank, *args) in WORLD fresh processes and wait for them, failing after `timeout` s.

    Spawned, not forked: this test process has already run multi-threaded torch and DataLoader
    workers, and a child forked from it can deadlock on a lock some thread held at the fork
    (seen in about one run in ten). Each child sets one torch thread, as DataLoader workers do.
    """
    ctx = mp.start_processes(_rank_main, args=(fn, *args), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"the {WORLD} DDP processes did not finish within {timeout:.0f} s")


def _rank_main(rank: int, fn, *args) -> None:
    """fn(rank, *args), then leave at once: a rank whose work and checks passed exits 0 without
    running C++ static destructors, where Gloo's threads can abort a process at interpreter exit
    ("terminate called without an active exception", seen once in a loaded full-suite run)."""
    fn(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_env(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)


def real_batch(n: int) -> dict[str, torch.Tensor]:
    ds = CocoKeypoints.from_config(TINY, COCO_MINI / "annotations" / "person_keypoints_mini.json",
                                   COCO_MINI / "images", train=True, seed=5)
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in ("image", "target", "target_weight")}


def _ddp_grads(rank: int, port: int, batch: dict, init: dict, out: str) -> None:
    from tokenpose.training.distributed import cleanup, init_distributed, wrap_model

    set_env(rank, port)
    ctx = init_distributed("cpu")
    assert ctx.backend == "gloo" and ctx.world_size == WORLD and ctx.rank == rank
    model = create_model(TINY).train()
    model.load_state_dict(init)
    ddp = wrap_model(model, ctx)
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    half = batch["image"].shape[0] // WORLD
    part = {k: v[rank * half:(rank + 1) * half] for k, v in batch.items()}
    loss = JointsMSELoss()(ddp(part["image"]), part["target"], part["target_weight"])
    loss.backward()
    torch.save({n: p.grad for n, p in model.named_parameters()}, f"{out}/grads{rank}.pt")
    cleanup(ctx)


def test_ddp_gradients_equal_single_process_full_batch(tmp_path):
    batch = real_batch(8)
    model = create_model(TINY).train()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    JointsMSELoss()(model(batch["image"]), batch["target"], batch["target_weight"]).backward()
    want = {n: p.grad for n, p in model.named_parameters()}

    run_ranks(_ddp_grads, free_port(), batch, init, str(tmp_path))
    got = [torch.load(tmp_path / f"grads{r}.pt") for r in range(WORLD)]
    half_only = {n: p.grad for n, p in _half_batch_grads(init, batch).items()}
    for name, g in want.items():
        assert torch.equal(got[0][name], got[1][name]), name  # all-reduced: identical on every rank
        torch.testing.assert_close(got[0][name], g, rtol=1e-4, atol=1e-6 * g.abs().max().item() + 1e-12,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # The check has teeth: the gradient of one half alone is far from the full-batch one.
    assert any(not torch.allclose(half_only[n], want[n], rtol=1e-2) for n in want)


def _half_batch_grads(init: dict, batch: dict) -> dict:
    model = create_model(TINY).train()
    model.load_state_dict(init)
    half = batch["image"].shape[0] // WORLD
    JointsMSELoss()(model(batch["image"][:half]), batch["target"][:half], batch["target_weight"][:half]).backward()
    return dict(model.named_parameters())


def test_resumable_sampler_partitions_and_skips():
    data = list(range(10))
    orders = []
    for rank in range(WORLD):
        s = ResumableSampler(data, num_replicas=WORLD, rank=rank, seed=3)
        s.set_epoch(1)
        orders.append(list(s))
        s.set_start(2)
        assert list(s) == orders[-1][2:] and len(s) == 3
    assert sorted(orders[0] + orders[1]) == data  # disjoint and complete
    again = ResumableSampler(data, num_replicas=WORLD, rank=0, seed=3)
    again.set_epoch(1)
    assert list(again) == orders[0]
    again.set_epoch(2)
    assert list(again) != orders[0]


def _train_rank(rank: int, port: int, cfg_dict: dict) -> None:
    set_env(rank, port)
    result = train(TrainConfig.from_dict(cfg_dict))
    assert result.steps == 2


def test_two_process_train_equals_one_process_with_the_doubled_batch(tmp_path):
    torch.set_num_threads(1)
    common = {"variant": TINY, "data_root": COCO_MINI, "epochs": 1, "workers": 0, "max_images": 8,
              "progress": False, "device": "cpu", "seed": 2}
    single = TrainConfig(out=tmp_path / "single", batch_size=4, **common)
    double = TrainConfig(out=tmp_path / "ddp", batch_size=2, **common)
    run_ranks(_train_rank, free_port(), double.to_dict())
    try:
        train(single)
    finally:
        torch.set_num_threads(2)

    a, b = read_checkpoint(tmp_path / "single" / "final.pth"), read_checkpoint(tmp_path / "ddp" / "final.pth")
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-4, atol=2e-5, msg=lambda m, k=k: f"{k}: {m}")
    rows_a, rows_b = read_metrics(tmp_path / "single" / "metrics.jsonl"), read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert len(rows_b) == 1  # only rank 0 writes
    assert rows_b[0]["step"] == rows_a[0]["step"] == 2 and rows_b[0]["images"] == rows_a[0]["images"] == 8
    assert rows_b[0]["loss"] == pytest.approx(rows_a[0]["loss"], rel=1e-5)


def _resume_rank(rank: int, port: int, cfg_dict: dict, out: str) -> None:
    from tokenpose.training.distributed import cleanup, init_distributed

    set_env(rank, port)
    ctx = init_distributed("cpu")
    try:
        base = TrainConfig.from_dict(cfg_dict)

        def fit(name: str, **kw):
            return Trainer(dataclasses.replace(base, out=f"{out}/{name}", **kw), ctx).fit()

        assert fit("reference").steps == 4
        stopped = fit("resumed", max_steps=2)  # last.pth mid-epoch 0: 2 of the 4 steps done
        assert (stopped.steps, stopped.metrics) == (2, [])
        resumed = fit("resumed", resume=True)
        assert (resumed.resumed_from_step, resumed.steps) == (2, 4)
        # Decided on rank 0 (which writes the folder), raised on every rank.
        with pytest.raises(TokenPoseError, match="already holds a run"):
            Trainer(dataclasses.replace(base, out=f"{out}/reference"), ctx)
    finally:
        cleanup(ctx)


def test_two_process_resume_mid_epoch_gives_the_uninterrupted_metrics(tmp_path):
    cfg = TrainConfig(variant=TINY, data_root=COCO_MINI, out=tmp_path, epochs=1, batch_size=2, workers=0,
                      max_images=16, progress=False, device="cpu", seed=4)  # 8 persons per rank, 4 steps
    run_ranks(_resume_rank, free_port(), cfg.to_dict(), str(tmp_path))
    # The checkpoint holds the loss sum of both ranks' first two steps, not rank 0's alone.
    rows, want = read_metrics(tmp_path / "resumed" / "metrics.jsonl"), read_metrics(tmp_path / "reference" / "metrics.jsonl")
    assert [(r["epoch"], r["step"], r["images"]) for r in rows] == [(r["epoch"], r["step"], r["images"]) for r in want] \
        == [(0, 4, 16)]
    assert rows[0]["loss"] == pytest.approx(want[0]["loss"], rel=1e-6)
    assert rows[0]["images_per_s"] > 0
    a, b = read_checkpoint(tmp_path / "resumed" / "final.pth"), read_checkpoint(tmp_path / "reference" / "final.pth")
    for k, v in b["state_dict"].items():
        assert torch.equal(a["state_dict"][k], v), k
