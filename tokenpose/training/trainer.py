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
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tokenpose.data.roots import resolve_data_files
from tokenpose.errors import CheckpointError, TokenPoseError
from tokenpose.files import atomic_torch_save, atomic_write
from tokenpose.models import create_model
from tokenpose.models.checkpoints import (
    load_official_state_dict,
    read_checkpoint,
    to_official_state_dict,
)
from tokenpose.models.config import ModelConfig
from tokenpose.training.config import TrainConfig
from tokenpose.training.distributed import (
    DistributedContext,
    ResumableSampler,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    on_main,
    resolve_device,
    unwrap_model,
    wrap_model,
)
from tokenpose.training.loss import JointsMSELoss

# 2: train_state's epoch_loss_sum / epoch_seconds are sums over all ranks (1: rank 0's own).
CHECKPOINT_VERSION = 2

# Reference §5.2: the ImageNet HRNet keys the official B/L training loads (top-level names).
HRNET_PRETRAINED_PREFIXES = (
    "conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2", "transition2", "stage3",
)


def load_hrnet_imagenet(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Initialise the HRNet backbone of a B/L model from an ImageNet HRNet-W32/W48 checkpoint.

    Loads every key whose top-level name is in HRNET_PRETRAINED_PREFIXES and that the backbone
    has (the ImageNet model's stage 4, head and classifier are ignored, and so are the stage-3
    fuse layers into branches 1-2 that TokenPose drops). Returns the loaded keys (backbone names).
    Raises CheckpointError when the model has no HRNet, the file matches no key, or shapes differ
    (e.g. W48 weights for a W32 model).
    """
    model = unwrap_model(model)
    cfg: ModelConfig = model.config
    if not cfg.backbone.startswith("hrnet"):
        raise CheckpointError(
            f"--hrnet-pretrained is for the HRNet variants (b, l-*); {cfg.name!r} has backbone {cfg.backbone!r}"
        )
    raw = read_checkpoint(path)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    sd = {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    own = model.backbone.state_dict()
    wanted = {k: v for k, v in sd.items() if k.split(".", 1)[0] in HRNET_PRETRAINED_PREFIXES and k in own}
    if not wanted:
        raise CheckpointError(
            f"{path}: no HRNet key matches the {cfg.name!r} backbone (expected names like "
            f"'conv1.weight', 'stage2.0.branches.0.0.conv1.weight'); is it an ImageNet HRNet checkpoint?"
        )
    misshaped = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in wanted.items() if v.shape != own[k].shape]
    if misshaped:
        width = cfg.backbone.removeprefix("hrnet_").upper()
        raise CheckpointError(
            f"{path}: {len(misshaped)} HRNet key(s) do not fit the {cfg.name!r} backbone (HRNet-{width}), "
            f"e.g. {misshaped[0]}"
        )
    model.backbone.load_state_dict(wanted, strict=False)
    return sorted(wanted)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; `deterministic` also selects deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = torch.cuda.is_available()


def rng_state() -> dict:
    """Python, numpy and torch (CPU + CUDA) RNG states as tensors/ints (weights_only-loadable)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_train_dataset(cfg: TrainConfig) -> Dataset:
    """The training dataset of `cfg` (augmented unless cfg.augment is False), cut to max_images."""
    mc = cfg.model_config
    ann, images = resolve_data_files(cfg.dataset_name, cfg.data_root, cfg.ann_file, cfg.image_dir, "train")
    if cfg.dataset_name == "coco":
        from tokenpose.data.coco import CocoKeypoints

        ds = CocoKeypoints.from_config(mc, ann, images, train=cfg.augment, seed=cfg.seed, on_bad=cfg.on_bad)
    else:
        from tokenpose.data.mpii import MpiiKeypoints

        ds = MpiiKeypoints.from_config(mc, ann, images, train=cfg.augment, seed=cfg.seed, on_bad=cfg.on_bad)
    if len(ds) == 0:
        raise TokenPoseError(f"the training set {ann} holds no usable person")
    if cfg.max_images is not None and cfg.max_images < len(ds):
        ds = Subset(ds, range(cfg.max_images))
    return ds


def _base_dataset(ds: Dataset) -> Dataset:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def build_val_dataset(cfg: TrainConfig) -> Dataset | None:
    """The COCO validation set (ground-truth boxes, no augmentation), or None.
    (`TrainConfig.validate` rejects a validation set for MPII.)"""
    if cfg.val_ann_file is None:
        return None
    from tokenpose.data.coco import CocoKeypoints

    # Without --val-image-dir, look for the images beside the json as in a COCO root
    # (<root>/annotations/x.json -> <root>/images/<split>, <root>/<split> or <root>/images).
    ann, images = resolve_data_files("coco", cfg.val_ann_file.parent.parent, cfg.val_ann_file, cfg.val_image_dir,
                                     "val")
    return CocoKeypoints.from_config(cfg.model_config, ann, images, train=False, on_bad=cfg.on_bad)


@torch.no_grad()
def evaluate_coco(model: nn.Module, dataset: Dataset, *, device: torch.device | str = "cpu",
                  batch_size: int = 32, flip_test: bool = True, workers: int = 0) -> dict[str, float]:
    """COCO keypoint AP of `model` on a (non-augmented) COCO dataset's boxes.

    Heatmaps (B, J, h, w) (flip-test averaged when `flip_test`) are decoded with the codec
    (argmax + DARK) back to image pixels and scored by `CocoEvaluator` (rescoring, OKS NMS).
    Returns the 10 COCO stats (AP, AP50, ..., ARl) in [0, 1].
    """
    from tokenpose.data.heatmaps import HeatmapCodec
    from tokenpose.data.transforms import flip_test_average
    from tokenpose.evaluation.coco import CocoEvaluator

    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    cfg = model.config
    base = _base_dataset(dataset)
    codec = HeatmapCodec.from_config(cfg)
    evaluator = CocoEvaluator(base.ann_file)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    try:
        for batch in loader:
            images = batch["image"].to(device)
            heatmaps = model(images).float()  # (B, J, h, w)
            if flip_test:
                heatmaps = flip_test_average(heatmaps, model(images.flip(-1)).float(), cfg.flip_pairs)
            centers, scales = batch["center"].numpy(), batch["scale"].numpy()
            keypoints, maxvals = codec.decode(heatmaps, centers, scales)
            evaluator.add(batch["image_id"].numpy(), keypoints, maxvals, centers, scales,
                          batch["box_score"].numpy())
    finally:
        model.train(was_training)
    return evaluator.evaluate()


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


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl file (an empty list when it does not exist).

    A last line that is not json (an append cut short by a kill) is skipped with a warning; a bad
    line before the last one raises TokenPoseError.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, errors="replace") as f:
        lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    rows = []
    for k, (number, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if k < len(lines) - 1:
                raise TokenPoseError(f"{path}: line {number} is not json ({e.msg}); fix or remove that line") from None
            warnings.warn(f"{path}: skipping the last line ({number}), an incomplete row (interrupted write?): "
                          f"{line.strip()[:80]!r}", stacklevel=2)
    return rows


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
        if resume_path is None:  # decided on rank 0 (which writes the folder), raised on every rank
            on_main(self._refuse_existing_run, self.ctx)

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

    def _refuse_existing_run(self) -> None:
        existing = [n for n in ("last.pth", "metrics.jsonl") if (self.out / n).exists()]
        if existing:
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
        self._check_settings(path, ckpt.get("config"))
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
        base = _base_dataset(self.train_set)
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

    def _check_settings(self, path: Path, saved: dict | None) -> None:
        """Raise CheckpointError naming the settings that changed the run since `saved` (the
        checkpoint's TrainConfig dict); warn (rank 0) about changes that only matter from now on."""
        if not isinstance(saved, dict):
            return  # a checkpoint without its config: nothing to compare
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        try:
            old = TrainConfig.from_dict({k: v for k, v in saved.items() if k in known})
        except (ValueError, TypeError) as e:
            if self.ctx.is_main:
                warnings.warn(f"{path}: cannot read its training config ({e}); settings not compared", stacklevel=3)
            return
        breaking, harmless = changed_settings(old, self.cfg)
        if breaking:
            raise CheckpointError(
                f"{path}: the run was started with other settings ({'; '.join(breaking)}); resume with the "
                f"original ones, or start a new run in another --out"
            )
        if harmless and self.ctx.is_main:
            warnings.warn(f"{path}: resuming with changed settings ({'; '.join(harmless)})", stacklevel=3)

    def _prepare_out(self) -> None:
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for tmp in self.out.glob(".*.tmp"):  # temp files of atomic writes a kill interrupted
            tmp.unlink(missing_ok=True)
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
        console = _console(self.ctx.is_main)
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
        with _progress(console if cfg.progress else None) as progress:
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


# Settings a resumed run must share with the checkpoint (the optimizer and scheduler states and the
# data order come from them), and settings that may change from the resume on (warned about).
RUN_SETTINGS = ("dataset", "batch_size", "seed", "max_images", "augment", "lr", "betas", "weight_decay",
                "milestones", "gamma")
RESUMABLE_SETTINGS = ("epochs", "amp", "grad_clip", "deterministic", "on_bad", "data_root", "ann_file", "image_dir")


def changed_settings(old: TrainConfig, new: TrainConfig) -> tuple[list[str], list[str]]:
    """("name old -> new" for the RUN_SETTINGS that differ, the same for RESUMABLE_SETTINGS).
    The model is compared separately (its config is in every checkpoint)."""
    derived = {"dataset": lambda c: c.dataset_name, "batch_size": lambda c: c.per_process_batch_size}

    def diff(names: tuple[str, ...]) -> list[str]:
        out = []
        for name in names:
            get = derived.get(name, lambda c, name=name: getattr(c, name))
            a, b = get(old), get(new)
            if a != b:
                fmt = (lambda v: list(v)) if isinstance(a, tuple) else (lambda v: v)
                out.append(f"{name} {fmt(a)} -> {fmt(b)}")
        return out

    return diff(RUN_SETTINGS), diff(RESUMABLE_SETTINGS)


def model_config_from_checkpoint(ckpt: dict) -> ModelConfig:
    """Rebuild the ModelConfig a training checkpoint (last/best/final.pth) stores."""
    return ModelConfig.from_dict(ckpt["model_config"])


def _console(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console

    return Console()


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(console):
    if console is None:
        return _NoProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.6f}"), TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeRemainingColumn(), console=console, transient=True,
    )


def train(cfg: TrainConfig) -> TrainResult:
    """Run one training (single process, or one rank under torchrun) and return its result.

    Starts and destroys the process group when torchrun's environment says so.
    """
    ctx = init_distributed(cfg.device)
    try:
        return Trainer(cfg, ctx).fit()
    finally:
        cleanup(ctx)
