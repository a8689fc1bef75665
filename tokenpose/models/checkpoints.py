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

from tokenpose.errors import CheckpointError
from tokenpose.models.config import VARIANTS, ModelConfig, get_config

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
    from tokenpose.models.tokenpose import TokenPose

    cfg = get_config(cfg)
    with torch.device("meta"):
        model = TokenPose(cfg)
    return {official_key(k, cfg): tuple(v.shape) for k, v in model.state_dict().items()}


def to_official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under official keys (unwraps DDP/compile wrappers)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    cfg = model.config
    return {official_key(k, cfg): v for k, v in model.state_dict().items()}


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Accept a raw state_dict, or a dict holding one under `state_dict` / `best_state_dict`;
    strip a `module.` (DataParallel/DDP) prefix when every key has it."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    for wrapper in ("state_dict", "best_state_dict"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{source}: holds no tensors (keys: {', '.join(list(obj)[:8])})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


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


def _closest_variant(shapes: dict[str, tuple[int, ...]]) -> tuple[str, bool]:
    """The variant whose official layout best fits `shapes`, and whether it fits exactly."""
    best, best_score = "", -1.0
    for name in VARIANTS:
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

    Raises CheckpointError naming the missing, unexpected and mis-shaped keys, and the variant
    the checkpoint fits when it is another one.
    """
    cfg = model.config
    sd = unwrap_state_dict(state_dict, source)
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
        variant, exact = _closest_variant({k: tuple(v.shape) for k, v in sd.items()})
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
        raise CheckpointError(
            f"{source} does not fit TokenPose {cfg.name!r}: " + "; ".join(problems) + hint
        )
    model.load_state_dict({to_ours[k]: v for k, v in sd.items()}, strict=True)


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Read `path` and load it strictly into `model` (see `load_official_state_dict`)."""
    load_official_state_dict(model, read_checkpoint(path), source=str(path))


def save_weights(model: torch.nn.Module, path: str | os.PathLike, **extra: object) -> None:
    """Write the model's weights in the official layout (under `state_dict`), atomically."""
    from tokenpose.files import atomic_torch_save

    atomic_torch_save({"state_dict": to_official_state_dict(model), **extra}, path)
