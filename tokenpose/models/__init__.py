"""The TokenPose model zoo: variant table, model class, checkpoint conversion, complexity."""

from __future__ import annotations

import os

from tokenpose.models.checkpoints import load_checkpoint
from tokenpose.models.config import VARIANTS, ModelConfig, get_config, list_variants
from tokenpose.models.tokenpose import TokenPose


def create_model(variant: str | ModelConfig, checkpoint: str | os.PathLike | None = None) -> TokenPose:
    """Build a TokenPose variant, optionally loading a checkpoint strictly.

    `checkpoint` is a `.pth` holding a raw state_dict or one under `state_dict` /
    `best_state_dict`, with or without the `module.` prefix, in the official layout or in ours
    (`torch.save(model.state_dict())`). The model is returned in eval mode.
    """
    model = TokenPose(variant)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


__all__ = ["VARIANTS", "ModelConfig", "TokenPose", "create_model", "get_config", "list_variants"]
