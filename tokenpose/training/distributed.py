"""Multi-process training under torchrun: process group, DDP wrapping, a resumable sampler.

`torchrun --nproc-per-node N -m tokenpose.cli.main train ...` sets RANK / LOCAL_RANK /
WORLD_SIZE / MASTER_ADDR / MASTER_PORT; `init_distributed` reads them (NCCL on CUDA, Gloo on
CPU). Without them training runs in one process with the same code path (world size 1).
Only rank 0 writes files and prints. BatchNorm is not synchronised, as in the official training
(DataParallel with plain BatchNorm).
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from tokenpose.errors import TokenPoseError

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank among world_size processes, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None when no process group was started

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local_rank> when available, else cpu; "cuda" picks cuda:<local_rank>."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def init_distributed(device: str = "auto") -> DistributedContext:
    """Start the process group from torchrun's environment, or return a single-process context.

    Uses NCCL when the device is CUDA and Gloo otherwise; CUDA processes use cuda:LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=dev, backend=backend)


def wrap_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DistributedDataParallel around `model` (already on ctx.device) when distributed, else `model`."""
    if not ctx.distributed:
        return model
    # The keypoint-token gradient is a strided view out of the token concat's gradient; DDP copies
    # it into its bucket either way, and warns once per process about the layout. Not a problem.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def barrier(ctx: DistributedContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], ctx: DistributedContext) -> list[float]:
    """Sum a few floats over all processes (float64); identity in one process."""
    if not ctx.distributed:
        return list(values)
    device = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def on_main(fn: Callable[[], T], ctx: DistributedContext) -> T | None:
    """Run fn() on rank 0 only and make every rank fail the same way when it raises there.

    Returns fn()'s value on rank 0 and None on the others. Every rank must call it (a broadcast).
    On the other ranks the error is re-raised with rank 0's type and message (a TokenPoseError
    when that type cannot be rebuilt from a message).
    """
    result, error = None, None
    if ctx.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if ctx.distributed:
        # Plain strings only: any exception type can be sent, even one that does not pickle.
        box = [None if error is None else (type(error).__module__, type(error).__qualname__, str(error))]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            error = _rebuild_error(*box[0])
    if error is not None:
        raise error
    return result


def _rebuild_error(module: str, qualname: str, message: str) -> Exception:
    """An exception of the named type with `message` (TokenPoseError when that cannot be made)."""
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message)
    except Exception:  # noqa: BLE001 - unknown type, or a constructor that wants more than a message
        return TokenPoseError(message)
    return TokenPoseError(message)


def cleanup(ctx: DistributedContext) -> None:
    """Destroy the process group this context started (safe to call twice).

    Ranks first meet at a barrier, so none tears the group down while another is still in a
    collective (Gloo then aborts the late rank's process).
    """
    if ctx.distributed and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose epoch order is a pure function of (seed, epoch, rank), and which
    can start part-way through an epoch.

    After `set_epoch(e)` and `set_start(k)` it yields this rank's indices of epoch e from the
    k-th on, so a run resumed after k samples per rank sees exactly the samples the interrupted
    run had not reached yet. Works without a process group (num_replicas=1, rank=0).
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` indices of this rank's order for the current epoch."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
