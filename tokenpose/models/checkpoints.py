"""Official-layout state_dict <-> model: pure key conversion, strict loading, clear errors.

The official code nests its modules differently (PreNorm/Residual wrappers, a base module that
owns the tokens, backbone prefixes that depend on the variant). Our modules have plain names;
`official_key` translates each of our keys to the official one. Checkpoints we write use the
official layout, so ours and a trained official checkpoint are interchangeable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from tokenpose.errors import CheckpointError
from tokenpose.files import atomic_torch_save
from tokenpose.models.config import VARIANTS, ModelConfig, get_config
from tokenpose.models.tokenpose import TokenPose

# Prefixes wrappers put before every key: DataParallel/DDP, then torch.compile (in that order when
# a compiled model is wrapped in DDP).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_ENCODER_RULES = (
    (r"norm1\.(weight|bias)", "0.fn.norm.{0}"),
    (r"attn\.qkv\.weight", "0.fn.fn.to_qkv.weight"),
    (r"attn\.proj\.(weight|bias)", "0.fn.fn.to_out.0.{0}"),
    (r"norm2\.(weight|bias)", "1.fn.norm.{0}"),
    (r"mlp\.fc1\.(weight|bias)", "1.fn.fn.net.0.{0}"),
    (r"mlp\.fc2\.(weight|bias)", "1.fn.fn.net.3.{0}"),
)


def _prefixes(cfg: ModelConfig) -> tuple[str, str]:
    """(prefix of the token/encoder/head module, prefix of the backbone) in the official layout."""
    if cfg.backbone == "stem":
        return "features.", "features."  # S keeps its stem inside the base module
    if cfg.backbone == "pixels":
        return "transformer.", ""
    return "transformer.", "pre_feature."


def official_key(key: str, cfg: ModelConfig) -> str:
    """Our state_dict key -> the official one, for variant `cfg`."""
    base, backbone = _prefixes(cfg)
    if key.startswith("backbone."):
        return backbone + key[len("backbone."):]
    if key in ("keypoint_token", "pos_embedding"):
        return base + key
    if key.startswith("patch_embed."):
        return base + "patch_to_embedding." + key[len("patch_embed."):]
    if key.startswith("head."):
        return base + "mlp_head." + key[len("head."):]
    m = re.fullmatch(r"encoders\.(\d+)\.(\d+)\.(.+)", key)
    if m:
        group, layer, rest = int(m.group(1)), m.group(2), m.group(3)
        encoder = "transformer" if cfg.encoder_groups == 1 else f"transformer{group + 1}"
        for pattern, template in _ENCODER_RULES:
            r = re.fullmatch(pattern, rest)
            if r:
                return f"{base}{encoder}.layers.{layer}.{template.format(*r.groups())}"
    raise KeyError(f"no official name for parameter {key!r}")


def expected_official_shapes(cfg: ModelConfig | str) -> dict[str, tuple[int, ...]]:
    """Official key -> shape of every state_dict entry of a variant (built on the meta device)."""
    cfg = get_config(cfg)
    with torch.device("meta"):
        model = TokenPose(cfg)
    return {official_key(k, cfg): tuple(v.shape) for k, v in model.state_dict().items()}


def bare_model(model: nn.Module) -> nn.Module:
    """The TokenPose inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def to_official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under official keys (unwraps DDP/compile wrappers)."""
    model = bare_model(model)
    cfg = model.config
    return {official_key(k, cfg): v for k, v in model.state_dict().items()}


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Accept a raw state_dict, or a dict holding one under `state_dict` / `best_state_dict`;
    strip the `module.` (DataParallel/DDP) and `_orig_mod.` (torch.compile) prefixes when every
    key has them."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    for wrapper in ("state_dict", "best_state_dict"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{source}: holds no tensors (keys: {', '.join(list(obj)[:8])})")
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _internal_to_official(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], bool]:
    """(`sd` under official keys, whether it was in our own layout).

    `torch.save(model.state_dict())` writes our module names ("encoders.0.1.attn.qkv.weight"), not
    the official ones ("transformer.transformer.layers.1.0.fn.fn.to_qkv.weight"). No official key
    has one of our names, so a file where most keys are ours is in our layout; its keys are
    translated for `cfg` and any that are not ours are left to be reported as unexpected.
    """
    translated, ours = {}, 0
    for key, value in sd.items():
        try:
            translated[official_key(key, cfg)] = value
            ours += 1
        except KeyError:
            translated[key] = value
    if ours * 2 <= len(sd):
        return sd, False
    return translated, True


def read_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load a file with errors that name it (missing, empty, truncated, not a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {reason}") from None


def closest_variant(sd: Mapping[str, torch.Tensor]) -> tuple[str, bool]:
    """The variant whose official layout best fits `sd`, and whether it fits exactly. A file in our
    own layout is translated with each variant's names before it is compared (they differ by variant)."""
    best, best_score = "", -1.0
    for name, cfg in VARIANTS.items():
        as_official = _internal_to_official(dict(sd), cfg)[0]
        shapes = {k: tuple(v.shape) for k, v in as_official.items()}
        want = expected_official_shapes(name)
        if want == shapes:
            return name, True
        agree = sum(1 for k, s in shapes.items() if want.get(k) == s)
        score = agree / max(len(want), len(shapes))
        if score > best_score:
            best, best_score = name, score
    return best, False


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_official_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load official-layout weights into `model`, strictly.

    Our own layout (a `torch.save(model.state_dict())` file) is accepted too and translated.
    Raises CheckpointError naming the missing, unexpected and mis-shaped keys, and the variant
    the checkpoint fits when it is another one.
    """
    cfg = model.config
    raw = unwrap_state_dict(state_dict, source)
    sd, internal = _internal_to_official(raw, cfg)
    ours = model.state_dict()
    to_ours = {official_key(k, cfg): k for k in ours}
    missing = [k for k in to_ours if k not in sd]
    unexpected = [k for k in sd if k not in to_ours]
    misshaped = [
        f"{k} {tuple(sd[k].shape)} != {tuple(ours[to_ours[k]].shape)}"
        for k in to_ours
        if k in sd and tuple(sd[k].shape) != tuple(ours[to_ours[k]].shape)
    ]
    if missing or unexpected or misshaped:
        variant, exact = closest_variant(raw)
        problems = []
        if missing:
            problems.append(f"missing keys: {_names(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_names(unexpected)}")
        if misshaped:
            problems.append(f"mis-shaped keys: {_names(misshaped)}")
        hint = (
            f"; it is a checkpoint of variant {variant!r}" if exact
            else f"; the closest variant is {variant!r}" if variant != cfg.name else ""
        )
        layout = " (read as tokenpose's own module names, the layout of model.state_dict())" if internal else ""
        raise CheckpointError(
            f"{source}{layout} does not fit TokenPose {cfg.name!r}: " + "; ".join(problems) + hint
        )
    model.load_state_dict({to_ours[k]: v for k, v in sd.items()}, strict=True)


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Read `path` and load it strictly into `model` (see `load_official_state_dict`)."""
    load_official_state_dict(model, read_checkpoint(path), source=str(path))


def save_weights(model: torch.nn.Module, path: str | os.PathLike, **extra: object) -> None:
    """Write the model's weights in the official layout (under `state_dict`), atomically."""
    atomic_torch_save({"state_dict": to_official_state_dict(model), **extra}, path)


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
    model = bare_model(model)
    cfg: ModelConfig = model.config
    if not cfg.backbone.startswith("hrnet"):
        raise CheckpointError(
            f"--hrnet-pretrained is for the HRNet variants (b, l-*); {cfg.name!r} has backbone {cfg.backbone!r}"
        )
    sd = unwrap_state_dict(read_checkpoint(path), str(path))
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
