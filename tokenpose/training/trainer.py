"""The training loop: Adam + MultiStepLR on JointsMSELoss, AMP, DDP, atomic checkpoints, resume.

Out folder of a run (rank 0 writes everything):
  config.json     the TrainConfig of the latest start (plain json)
  metrics.jsonl   one json line per finished epoch: epoch, step, loss, lr, images/s, AP ...
  last.pth        resumable state, written atomically after every epoch and, with
                  `checkpoint_every_steps`, every N optimizer steps (mid-epoch)
  best.pth        weights of the epoch with the best validation AP (when validating)
  final.pth       weights after the last epoch
Every .pth holds the weights under `state_dict` in the official layout, so
`create_model(variant, checkpoint=...)` loads any of them.

Resume restores weights, optimizer, scheduler, GradScaler, counters, RNG states and the partial
epoch's loss sums; the sampler order is a function of (seed, epoch) and augmentation draws of
(seed, epoch, index), so a resumed run skips exactly the batches already done and sees the same
data the uninterrupted run would have seen. Under DDP the checkpoint holds the loss and time sums
of all ranks. A resume with other RUN_SETTINGS (seed, lr, batch, ...) or another model is refused;
changed RESUMABLE_SETTINGS (more epochs, amp, ...) are warned about. Temp files of interrupted
atomic writes (`.*.tmp`) are removed on every start, and a metrics row cut short by a kill is dropped.
Errors of rank-0-only work (folder checks, validation, writes) are raised on every rank.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import TextColumn
from torch import nn
from torch.utils.data import DataLoader

from tokenpose.errors import CheckpointError, TokenPoseError
from tokenpose.files import atomic_torch_save, atomic_write, check_writable, remove_stale_temp_files
from tokenpose.models import create_model
from tokenpose.models.checkpoints import (
    load_hrnet_imagenet,
    load_official_state_dict,
    read_checkpoint,
    to_official_state_dict,
)
from tokenpose.progress import make_progress
from tokenpose.training.checkpointing import (
    CHECKPOINT_VERSION,
    check_settings,
    read_metrics,
    rng_state,
    seed_everything,
    set_rng_state,
)
from tokenpose.training.config import TrainConfig
from tokenpose.training.datasets import base_dataset, build_train_dataset, build_val_dataset, evaluate_coco
from tokenpose.training.distributed import (
    DistributedContext,
    ResumableSampler,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    on_main,
    resolve_device,
    wrap_model,
)
from tokenpose.training.loss import JointsMSELoss


@dataclass
class TrainState:
    """Counters saved with every checkpoint. `epoch` is the epoch in progress (or the next one)
    and `epoch_samples` the samples this rank already trained on in it (the same on every rank).

    In a process, epoch_loss_sum / epoch_seconds are this rank's own sums; `_end_epoch` adds them
    up over the ranks. A checkpoint stores the sums over all ranks (`save_checkpoint` reduces them
    first) and `restore` gives them back to rank 0 only, so the epoch-end reduction stays right.
    """

    epoch: int = 0
    step: int = 0
    epoch_samples: int = 0
    epoch_loss_sum: float = 0.0  # sum over this rank's samples of the batch loss x batch size
    epoch_seconds: float = 0.0  # this rank's training time in the epoch
    best_ap: float | None = None


@dataclass
class TrainResult:
    """What `train` returns (rank 0 has the full picture; other ranks get their counters)."""

    out: Path
    epochs: int
    steps: int
    metrics: list[dict] = field(default_factory=list)
    best_ap: float | None = None
    last_checkpoint: Path | None = None
    final_checkpoint: Path | None = None
    resumed_from_step: int | None = None


class Trainer:
    """Owns model, optimizer, scheduler, scaler, data and counters of one run (one process).

    `fit()` trains from `state` to `cfg.epochs` (or `cfg.max_steps`) and returns a TrainResult.
    """

    def __init__(self, cfg: TrainConfig, ctx: DistributedContext | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx or DistributedContext(device=resolve_device(cfg.device))
        self.device = self.ctx.device
        self.out = cfg.out
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp fp16 needs a CUDA device (GradScaler); use --amp bf16 or off on CPU")
        seed_everything(cfg.seed, cfg.deterministic)

        resume_path = cfg.resume_path
        # Decided on rank 0 (which writes the folder) before any work, raised on every rank.
        on_main(lambda: self._check_out(fresh=resume_path is None), self.ctx)

        self.model = create_model(cfg.variant).to(self.device).train()
        self.hrnet_keys: list[str] = []
        if cfg.hrnet_pretrained is not None and resume_path is None:
            self.hrnet_keys = load_hrnet_imagenet(self.model, cfg.hrnet_pretrained)
        self.criterion = JointsMSELoss(use_target_weight=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                          weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(cfg.milestones), cfg.gamma)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.amp)
        self.state = TrainState()
        self.resumed_from_step: int | None = None
        if resume_path is not None:
            self.restore(resume_path)
        self.ddp_model = wrap_model(self.model, self.ctx)

        self.train_set = build_train_dataset(cfg)
        self.val_set = on_main(lambda: build_val_dataset(cfg), self.ctx)  # rank 0 validates
        self.batch_size = cfg.per_process_batch_size
        self.sampler = ResumableSampler(self.train_set, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                        shuffle=True, seed=cfg.seed, drop_last=False)
        self.steps_per_epoch = math.ceil(self.sampler.num_samples / self.batch_size)

    def _check_out(self, fresh: bool) -> None:
        """--out is a writable folder and, for a new run, holds no run yet."""
        check_writable(self.out, folder=True)
        existing = [n for n in ("last.pth", "metrics.jsonl") if (self.out / n).exists()]
        if fresh and existing:
            raise TokenPoseError(
                f"{self.out} already holds a run ({', '.join(existing)}); pass --resume to continue it "
                f"or choose another --out"
            )

    def checkpoint(self, epoch_totals: tuple[float, float] | None = None) -> dict:
        """The resumable state: official-layout weights plus everything `restore` needs.

        epoch_totals: (loss sum, seconds) of the epoch in progress summed over all ranks (what
        `save_checkpoint` passes); None takes this process's own sums (right in one process).
        """
        train_state = dataclasses.asdict(self.state)
        if epoch_totals is not None:
            train_state["epoch_loss_sum"], train_state["epoch_seconds"] = (float(v) for v in epoch_totals)
        return {
            "state_dict": to_official_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "train_state": train_state,
            "world_size": self.ctx.world_size,
            "rng": rng_state(),
            "config": self.cfg.to_dict(),
            "model_config": self.model.config.to_dict(),
            "version": CHECKPOINT_VERSION,
        }

    def save_checkpoint(self, name: str = "last.pth") -> Path | None:
        """Write `checkpoint()` atomically under out/name; returns the path on rank 0, None elsewhere.

        Every rank must call it: the epoch's loss and time sums are added up over the ranks first,
        and a failed write raises on every rank.
        """
        totals = all_reduce_sum([self.state.epoch_loss_sum, self.state.epoch_seconds], self.ctx)
        path = self.out / name

        def write() -> Path:
            atomic_torch_save(self.checkpoint(epoch_totals=(totals[0], totals[1])), path)
            return path

        return on_main(write, self.ctx)

    def save_weights(self, name: str, **extra) -> Path | None:
        """Official-layout weights (+ model config and `extra`) under out/name (rank 0 only)."""
        if not self.ctx.is_main:
            return None
        path = self.out / name
        atomic_torch_save({"state_dict": to_official_state_dict(self.model),
                           "model_config": self.model.config.to_dict(),
                           "epoch": self.state.epoch, "step": self.state.step, **extra}, path)
        return path

    def restore(self, path: Path) -> None:
        """Load a `checkpoint()` written by a run of the same model."""
        ckpt = read_checkpoint(path)
        missing = [k for k in ("state_dict", "optimizer", "scheduler", "train_state", "model_config") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path}: not a resumable training checkpoint (no {', '.join(missing)}); "
                                  f"resume from last.pth, not from weights-only files such as final.pth")
        want = self.model.config.to_dict()
        saved_model = ckpt["model_config"]
        if saved_model != want:
            diff = [k for k in want if k != "description" and saved_model.get(k) != want[k]]
            if diff:
                raise CheckpointError(f"{path}: was trained with another model config (differs in {', '.join(diff)})")
        check_settings(path, ckpt.get("config"), self.cfg, warn=self.ctx.is_main)
        state = TrainState(**ckpt["train_state"])
        saved_world = int(ckpt.get("world_size", 1))
        if state.epoch_samples and saved_world != self.ctx.world_size:
            raise CheckpointError(
                f"{path}: saved mid-epoch with {saved_world} process(es); resume it with the "
                f"same number (now {self.ctx.world_size}) so the remaining batches of the epoch are known"
            )
        load_official_state_dict(self.model, ckpt["state_dict"], source=str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("version", 1) < 2:  # version 1 stored rank 0's own sums: scale them to all ranks
            state.epoch_loss_sum *= saved_world
            state.epoch_seconds *= saved_world
        if not self.ctx.is_main:  # the checkpoint holds the sums over all ranks: count them once
            state.epoch_loss_sum, state.epoch_seconds = 0.0, 0.0
        self.state = state
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        self.resumed_from_step = self.state.step

    def _loader(self, epoch: int, start: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start)
        base = base_dataset(self.train_set)
        if hasattr(base, "set_epoch"):
            base.set_epoch(epoch)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=self.sampler, num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda", drop_last=False,
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
            persistent_workers=False,
        )

    def train_step(self, batch: dict) -> float:
        """One optimizer step on a batch dict (image (B,3,H,W), target (B,J,h,w), target_weight
        (B,J,1)); returns the batch loss."""
        images = batch["image"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        weight = batch["target_weight"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            output = self.ddp_model(images)
        loss = self.criterion(output, target, weight)
        if not torch.isfinite(loss):
            raise TokenPoseError(
                f"the loss became {loss.item()} at step {self.state.step + 1}; lower --lr, set --grad-clip "
                f"or turn --amp off"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _prepare_out(self) -> None:
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.out)  # temp files of atomic writes a kill interrupted
        with atomic_write(self.out / "config.json", "w") as f:
            json.dump(self.cfg.to_dict(), f, indent=2)
        metrics = self.out / "metrics.jsonl"
        if self.resumed_from_step is not None:
            # Rows of epochs the checkpoint has not finished (a kill between the metrics row and
            # the checkpoint) are dropped; the resumed run writes them again.
            rows = [r for r in read_metrics(metrics) if r["epoch"] < self.state.epoch]
            with atomic_write(metrics, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    def _append_metrics(self, row: dict) -> None:
        if not self.ctx.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def fit(self) -> TrainResult:
        """Train to cfg.epochs (or cfg.max_steps); see the module docstring for the files."""
        cfg, st = self.cfg, self.state
        on_main(self._prepare_out, self.ctx)
        console = Console() if self.ctx.is_main else None
        mc = self.model.config
        if console:
            console.print(
                f"training [bold]{mc.name}[/] on {len(self.train_set)} persons, {self.ctx.world_size} process(es) "
                f"x batch {self.batch_size} on {self.device}, {self.steps_per_epoch} steps/epoch, amp {cfg.amp}"
            )
            if self.resumed_from_step is not None:
                console.print(f"resumed from step {st.step} (epoch {st.epoch}, "
                              f"{st.epoch_samples // self.batch_size} batches done in it)")
            if self.hrnet_keys:
                console.print(f"HRNet ImageNet init: {len(self.hrnet_keys)} tensors from {cfg.hrnet_pretrained}")
            elif mc.backbone.startswith("hrnet") and self.resumed_from_step is None:
                console.print("[yellow]warning[/]: HRNet backbone trained from scratch; the official B/L "
                              "training starts from ImageNet weights (--hrnet-pretrained)")
        metrics: list[dict] = []
        stop = False
        final_path = None
        with make_progress(TextColumn("loss {task.fields[loss]:.6f}"), TextColumn("{task.fields[ips]:.1f} img/s"),
                           console=console, enabled=console is not None and cfg.progress) as progress:
            while st.epoch < cfg.epochs and not stop:
                epoch = st.epoch
                loader = self._loader(epoch, st.epoch_samples)
                task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=self.steps_per_epoch,
                                         completed=st.epoch_samples // self.batch_size, loss=float("nan"), ips=0.0) \
                    if progress else None
                tic = time.perf_counter()
                for batch in loader:
                    n = int(batch["image"].shape[0])
                    loss = self.train_step(batch)
                    st.step += 1
                    st.epoch_samples += n
                    st.epoch_loss_sum += loss * n
                    toc = time.perf_counter()
                    st.epoch_seconds += toc - tic
                    if progress:
                        progress.update(task, advance=1, loss=loss, ips=n * self.ctx.world_size / max(toc - tic, 1e-9))
                    tic = toc
                    epoch_done = st.epoch_samples >= self.sampler.num_samples
                    if cfg.max_steps is not None and st.step >= cfg.max_steps:
                        stop = True
                    if not epoch_done and (stop or (cfg.checkpoint_every_steps
                                                    and st.step % cfg.checkpoint_every_steps == 0)):
                        self.save_checkpoint()
                    if stop:
                        break
                if stop and st.epoch_samples < self.sampler.num_samples:
                    break
                metrics.append(self._end_epoch(console))
            final_path = on_main(lambda: self.save_weights("final.pth", finished=st.epoch >= cfg.epochs), self.ctx)
        barrier(self.ctx)
        return TrainResult(out=self.out, epochs=st.epoch, steps=st.step, metrics=metrics, best_ap=st.best_ap,
                           last_checkpoint=self.out / "last.pth" if self.ctx.is_main else None,
                           final_checkpoint=final_path, resumed_from_step=self.resumed_from_step)

    def _end_epoch(self, console) -> dict:
        """Scheduler step, validation, the metrics row and the checkpoints of a finished epoch."""
        cfg, st = self.cfg, self.state
        loss_sum, samples, seconds = all_reduce_sum([st.epoch_loss_sum, st.epoch_samples, st.epoch_seconds], self.ctx)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()  # per epoch, after the epoch (and, officially, after validation)
        row = {
            "epoch": st.epoch, "step": st.step, "loss": loss_sum / max(samples, 1), "lr": lr,
            "images": int(samples), "images_per_s": samples / max(seconds / self.ctx.world_size, 1e-9),
        }
        validate = self.val_set is not None and ((st.epoch + 1) % cfg.val_every == 0 or st.epoch + 1 == cfg.epochs)
        is_best = False
        if validate:  # on rank 0, which holds the validation set; an error there stops every rank
            stats = on_main(lambda: evaluate_coco(self.model, self.val_set, device=self.device,
                                                  batch_size=self.batch_size, flip_test=cfg.val_flip_test,
                                                  workers=cfg.workers), self.ctx)
            if stats is not None:
                row.update({k: stats[k] for k in ("AP", "AP50", "AP75", "AR")})
                is_best = st.best_ap is None or stats["AP"] > st.best_ap
                if is_best:
                    st.best_ap = stats["AP"]
        st.epoch += 1
        st.epoch_samples, st.epoch_loss_sum, st.epoch_seconds = 0, 0.0, 0.0

        def write() -> None:
            self._append_metrics(row)  # before last.pth: a resume drops rows of unfinished epochs
            if is_best:
                self.save_weights("best.pth", AP=st.best_ap)

        on_main(write, self.ctx)
        self.save_checkpoint()
        barrier(self.ctx)
        if console:
            ap = f"  AP {row['AP']:.4f}" if "AP" in row else ""
            console.print(f"epoch {st.epoch}/{cfg.epochs}  step {st.step}  loss {row['loss']:.6f}  "
                          f"lr {lr:.2e}  {row['images_per_s']:.1f} img/s{ap}")
        return row


def train(cfg: TrainConfig) -> TrainResult:
    """Run one training (single process, or one rank under torchrun) and return its result.

    Starts and destroys the process group when torchrun's environment says so.
    """
    ctx = init_distributed(cfg.device)
    try:
        return Trainer(cfg, ctx).fit()
    finally:
        cleanup(ctx)
