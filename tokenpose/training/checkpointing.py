"""What a training checkpoint holds besides the weights, and how a resume is checked against it.

RNG states (python, numpy, torch CPU + CUDA) as weights_only-loadable tensors; the settings a
resumed run must share with its checkpoint (RUN_SETTINGS) and those it may change
(RESUMABLE_SETTINGS); the metrics.jsonl reader that tolerates a row cut short by a kill.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from tokenpose.errors import CheckpointError, TokenPoseError
from tokenpose.models.config import ModelConfig
from tokenpose.training.config import TrainConfig

# 2: train_state's epoch_loss_sum / epoch_seconds are sums over all ranks (1: rank 0's own).
CHECKPOINT_VERSION = 2


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



def check_settings(path: Path, saved: dict | None, cfg: TrainConfig, *, warn: bool = True) -> None:
    """Raise CheckpointError naming the settings that changed the run since `saved` (the
    checkpoint's TrainConfig dict); warn (when `warn`, i.e. on rank 0) about changes that only
    matter from now on."""
    if not isinstance(saved, dict):
        return  # a checkpoint without its config: nothing to compare
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        old = TrainConfig.from_dict({k: v for k, v in saved.items() if k in known})
    except (ValueError, TypeError) as e:
        if warn:
            warnings.warn(f"{path}: cannot read its training config ({e}); settings not compared", stacklevel=3)
        return
    breaking, harmless = changed_settings(old, cfg)
    if breaking:
        raise CheckpointError(
            f"{path}: the run was started with other settings ({'; '.join(breaking)}); resume with the "
            f"original ones, or start a new run in another --out"
        )
    if harmless and warn:
        warnings.warn(f"{path}: resuming with changed settings ({'; '.join(harmless)})", stacklevel=3)
