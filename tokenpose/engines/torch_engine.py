"""PyTorch engine: a TokenPose checkpoint (`.pth`) run eagerly or compiled, on CPU or CUDA.

The variant of a checkpoint comes, in this order, from the `variant=` option, from metadata the
checkpoint carries (`variant`, `model_config`, or a training `config` holding `variant`), or from
matching its key shapes against every variant (only an exact match is accepted).
Optional FP16/BF16 autocast; outputs are always float32 numpy heatmaps. For inference the engine
runs a copy of the model with the BatchNorms folded into their convolutions (`fold_batchnorm`); on
a CPU an eager engine runs a large batch in micro-batches of `CPU_MICRO_BATCH` (see `micro_batch`)
and the process's malloc keeps freed activations for the next call (`cpu.retain_freed_memory`).
A reduced precision the device has no instructions for (bf16 without AVX512-BF16/AMX, fp16 without
AVX512-FP16/AMX-FP16 on a CPU) runs emulated, slower than fp32: the engine says so once (`emulated_reason`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenpose.engines.base import (
    EngineMeta,
    check_engine_input,
    in_slices,
    micro_batch_size,
    reject_options,
)
from tokenpose.engines.cpu import cpu_flags, retain_freed_memory
from tokenpose.errors import CheckpointError, TokenPoseError
from tokenpose.manifest import Manifest, sha256_file
from tokenpose.models.backbones import fold_batchnorm
from tokenpose.models.checkpoints import (
    closest_variant,
    load_official_state_dict,
    read_checkpoint,
    unwrap_state_dict,
)
from tokenpose.models.config import VARIANTS, ModelConfig, get_config
from tokenpose.models.fused_attention import FusedAttentionError, unavailable_reason
from tokenpose.models.tokenpose import TokenPose

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Eager PyTorch on a CPU runs one op at a time over the whole batch: past a few images every
# intermediate (S-v2: 58 MB of MLP activations at batch 32) leaves the caches and each elementwise
# op, copy and convolution pays for it, and with glibc's default malloc every call also faults those
# buffers in again (`cpu.retain_freed_memory`). S-v2, 2 cores, batch 32 / batch 1 images/s in one
# interleaved run: whole batches 1.10 with the malloc policy (0.85 without), micro-batches of 8
# 1.16 (1.04 without); benchmarks/README.md. Compiled engines fuse those ops and take the batch whole.
CPU_MICRO_BATCH = 8

# CPU flags (x86 /proc/cpuinfo names, then Arm's) any one of which runs the precision natively.
# Without them PyTorch converts to float32 around every kernel: 20x slower than fp32 on AVX2.
NATIVE_CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16", "bf16"), "fp16": ("avx512_fp16", "amx_fp16", "asimdhp")}
_warned: set[tuple[str, str]] = set()


def emulated_reason(precision: str, device: str | torch.device, flags: Iterable[str] | None = None) -> str | None:
    """Why `precision` would run emulated on `device` (slower than fp32), or None when it is native.

    flags: the CPU's feature flags (default: `cpu_flags()`); when they cannot be read nothing is
    claimed. fp32 is always native; on CUDA, bf16 needs compute capability 8.0 or newer.
    """
    if precision not in NATIVE_CPU_FLAGS:
        return None
    dev = torch.device(device)
    if dev.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16 on this GPU is emulated (it needs compute capability 8.0 or newer)"
        return None
    have = cpu_flags() if flags is None else frozenset(flags)
    native = NATIVE_CPU_FLAGS[precision]
    if have is None or not have.isdisjoint(native):
        return None
    return f"{precision} on this CPU is emulated (none of {', '.join(native[:2])}): slower than fp32"


def _config_from_metadata(value: Any) -> ModelConfig | None:
    """A variant name, a `{"model_config": {...}}` dict (TrainConfig.to_dict) or a ModelConfig dict."""
    if isinstance(value, ModelConfig):
        return value
    if isinstance(value, str):
        return get_config(value)
    if isinstance(value, Mapping):
        fields = dict(value.get("model_config", value))
        if "backbone" not in fields:
            return None
        return ModelConfig.from_dict(fields)
    return None


def checkpoint_config(checkpoint: Mapping, source: str = "checkpoint") -> ModelConfig:
    """The ModelConfig a loaded checkpoint was saved for (metadata first, then key shapes).

    Raises CheckpointError when neither the metadata nor an exact shape match names a variant.
    """
    candidates = [checkpoint.get("variant"), checkpoint.get("model_config")]
    train_cfg = checkpoint.get("config")
    if isinstance(train_cfg, Mapping):
        candidates.append(train_cfg.get("variant"))
    for value in candidates:
        cfg = _config_from_metadata(value) if value is not None else None
        if cfg is not None:
            return cfg
    name, exact = closest_variant(unwrap_state_dict(checkpoint, source))
    if not exact:
        raise CheckpointError(
            f"{source}: cannot tell which variant this checkpoint is for (no variant metadata, and its "
            f"key shapes match no variant exactly; closest {name!r}): pass the variant explicitly"
        )
    return VARIANTS[name]


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise TokenPoseError(f"device must be auto, cpu, cuda or cuda:N for a PyTorch engine, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TokenPoseError(f"device {str(device)!r} requested but CUDA is not available to PyTorch here")
    return dev


def _switch_attention(model: TokenPose, device: torch.device, precision: str, wanted: bool | None) -> bool:
    """Turn the fused CPU attention kernel on in `model` when `wanted` (None: where it helps); True if on."""
    if wanted is False:
        return False
    reason = ("it runs float32 on the CPU only" if device.type != "cpu" or precision != "fp32"
              else "the model is not a TokenPose" if not isinstance(model, TokenPose) else unavailable_reason())
    try:
        if reason is not None:
            raise FusedAttentionError(reason)
        model.use_fused_attention(True)
        return True
    except FusedAttentionError as exc:
        if wanted:
            raise TokenPoseError(f"fused_attention=True, but the kernel cannot be used here: {exc}") from None
        if reason is None and ("fused_attention", "build") not in _warned:  # worth saying once; a plain CPU is not
            _warned.add(("fused_attention", "build"))
            warnings.warn(f"TorchEngine: attention through SDPA, the fused kernel failed: {exc}", stacklevel=3)
        return False


class TorchEngine:
    """A TokenPose `nn.Module` behind the Engine protocol.

    `__call__`: (B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps (numpy, host).
    precision: "fp32", or "fp16"/"bf16" autocast on the engine's device (`emulated` holds why it
    is slow where the device lacks the instructions, else None); compile: `torch.compile` (Inductor,
    weights frozen in, one graph per batch size: the first call at each size compiles).
    fused_attention: attention through the fused CPU kernel `tokenpose::attention`
    (tokenpose.models.fused_attention): None (default) where it helps (FP32 on an AVX-512 CPU, a C++
    compiler to build it once; else SDPA, with a warning if the build failed), True: required,
    False: SDPA; `self.fused_attention` says which runs.
    max_batch: the largest batch one call accepts (None: unlimited). micro_batch: run a call in
    slices of at most this many images ("auto": `CPU_MICRO_BATCH` for an eager engine on a CPU, the
    whole batch otherwise; None or 0: always whole). `config` is the model's
    ModelConfig; `meta` says what it takes (ImageNet mean/std, RGB, any batch up to max_batch).
    """

    name = "torch"
    min_batch = 1

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        compile: bool = False,
        max_batch: int | None = None,
        micro_batch: int | str | None = "auto",
        manifest: dict[str, Any] | None = None,
        fused_attention: bool | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise TokenPoseError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if max_batch is not None and max_batch < 1:
            raise TokenPoseError(f"max_batch must be >= 1, got {max_batch}")
        self.device = _device(device)
        self.precision = precision
        self.config: ModelConfig = model.config
        self.max_batch = max_batch
        self.meta = EngineMeta.from_config(self.config, precision=precision, max_batch=max_batch)
        self.emulated = emulated_reason(precision, self.device)
        if self.emulated and (precision, self.device.type) not in _warned:
            _warned.add((precision, self.device.type))
            warnings.warn(f"TorchEngine: {self.emulated}", stacklevel=2)
        self.model = fold_batchnorm(model).to(self.device)
        self.fused_attention = _switch_attention(self.model, self.device, precision, fused_attention)
        if self.device.type == "cpu":
            retain_freed_memory()
        self.micro_batch = micro_batch_size(
            micro_batch, CPU_MICRO_BATCH if self.device.type == "cpu" and not compile else None)
        # One graph per batch size (no dynamic-shape kernels) with the weights folded in as
        # constants ("freezing"); the engine only runs under inference_mode, which freezing needs.
        self._forward = (torch.compile(self.model, dynamic=False, options={"freezing": True})
                         if compile else self.model)
        self.manifest = manifest if manifest is not None else self._manifest(None, None)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        variant: str | ModelConfig | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        compile: bool = False,
        max_batch: int | None = None,
        micro_batch: int | str | None = "auto",
        fused_attention: bool | None = None,
        **unused: Any,
    ) -> TorchEngine:
        """Open a `.pth` checkpoint (official layout, ours or a training checkpoint)."""
        reject_options(unused, "torch")
        path = Path(path)
        ckpt = read_checkpoint(path)
        if not isinstance(ckpt, Mapping):
            raise CheckpointError(f"{path}: expected a state_dict or a dict holding one, got {type(ckpt).__name__}")
        cfg = get_config(variant) if variant is not None else checkpoint_config(ckpt, str(path))
        model = TokenPose(cfg)
        load_official_state_dict(model, ckpt, source=str(path))
        engine = cls(model, device=device, precision=precision, compile=compile, max_batch=max_batch,
                     micro_batch=micro_batch, fused_attention=fused_attention)
        engine.manifest = engine._manifest(path, ckpt)
        return engine

    def _manifest(self, path: Path | None, ckpt: Mapping | None) -> dict[str, Any]:
        digest = sha256_file(path) if path is not None else ""
        batch = {"min": 1, "opt": self.max_batch or 1, "max": self.max_batch or 0}
        return Manifest.for_config(
            self.config, artifact=path.name if path else "", format="pytorch", precision=self.precision,
            batch=batch, checkpoint=path.name if path else None, checkpoint_sha256=digest or None,
            sha256=digest, random_weights=path is None and ckpt is None,
        ).to_dict()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps."""
        x = check_engine_input(images, self.meta, self.name)
        tensor = torch.from_numpy(x).to(self.device, non_blocking=True)
        dtype = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype or torch.float32,
                                                     enabled=dtype is not None):
            outs = in_slices(self._forward, tensor, self.micro_batch)
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.float().cpu().numpy()

    def __repr__(self) -> str:
        return f"TorchEngine({self.config.name}, {self.device}, {self.precision})"
