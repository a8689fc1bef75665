"""The TokenPose model: backbone -> visual tokens + keypoint tokens -> encoder(s) -> heatmaps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from tokenpose.errors import InputShapeError
from tokenpose.models.backbones import build_backbone
from tokenpose.models.config import ModelConfig, get_config
from tokenpose.models.fused_attention import ensure_loaded
from tokenpose.models.layers import Attention, EncoderLayer, sine_position_table


class TokenPose(nn.Module):
    """One class for every variant; the `ModelConfig` decides the architecture.

    forward: `(B, 3, H, W)` normalised RGB float -> `(B, J, H/4, W/4)` heatmaps.
    """

    def __init__(self, config: ModelConfig | str) -> None:
        super().__init__()
        cfg = self.config = get_config(config)
        self.backbone = build_backbone(cfg.backbone)
        self.keypoint_token = nn.Parameter(torch.zeros(1, cfg.num_joints, cfg.dim))
        # A fixed table, but part of the official checkpoint layout, so it is a persistent buffer
        # that checkpoints overwrite; it never counts as a trainable parameter.
        self.register_buffer("pos_embedding", sine_position_table(cfg.token_grid_hw, cfg.dim))
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.dim)
        self.encoders = nn.ModuleList(
            nn.ModuleList(
                EncoderLayer(cfg.dim, cfg.heads, cfg.mlp_hidden, cfg.attn_scale) for _ in range(cfg.depth)
            )
            for _ in range(cfg.encoder_groups)
        )
        hm_size = cfg.heatmap_hw[0] * cfg.heatmap_hw[1]
        if cfg.head_hidden is None:
            fused = cfg.dim * cfg.encoder_groups
            self.head = nn.Sequential(nn.LayerNorm(fused), nn.Linear(fused, hm_size))
        else:
            self.head = nn.Sequential(
                nn.LayerNorm(cfg.dim),
                nn.Linear(cfg.dim, cfg.head_hidden),
                nn.LayerNorm(cfg.head_hidden),
                nn.Linear(cfg.head_hidden, hm_size),
            )
        # True: compute exactly as the official code does (every token of every layer, the patch
        # embedding as a Linear over flattened patches); the paper's FLOP count is taken that way.
        # False (default): the same function with less work (`embed_patches`, the pruned last layer).
        self.reference_form = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official training-from-scratch initialisation.

        Transformer, patch embedding and head Linears: trunc_normal(0.02), bias 0; LayerNorms
        1/0; keypoint tokens trunc_normal(0.02); backbone convs normal(0, 0.001), BatchNorms 1/0.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.trunc_normal_(self.keypoint_token, std=0.02)

    def use_fused_attention(self, enabled: bool = True, *, log=None) -> TokenPose:
        """Run the attention layers through the fused CPU kernel `tokenpose::attention`
        (tokenpose.models.fused_attention; built on first use) or, with False, through
        `scaled_dot_product_attention` again. Only float32 CPU inference takes the kernel; training,
        other devices and dtypes keep SDPA. FusedAttentionError when the kernel cannot be built or
        loaded. Returns the model."""
        if enabled:
            ensure_loaded(log=log)
        for m in self._attention_layers():
            m.fused_cpu = bool(enabled)
        return self

    @contextlib.contextmanager
    def using_fused_attention(self, enabled: bool) -> Iterator[TokenPose]:
        """`use_fused_attention(enabled)` inside the block, each layer's previous setting back after it."""
        layers = self._attention_layers()
        before = [m.fused_cpu for m in layers]
        self.use_fused_attention(enabled)
        try:
            yield self
        finally:
            for m, was in zip(layers, before):
                m.fused_cpu = was

    @property
    def uses_fused_attention(self) -> bool:
        return any(m.fused_cpu for m in self._attention_layers())

    def _attention_layers(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    def check_input(self, images: torch.Tensor) -> None:
        """Raise a one-line error unless `images` is (B, 3, H, W) at this variant's input size."""
        h, w = self.config.input_hw
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (h, w):
            raise InputShapeError(
                f"TokenPose {self.config.name} expects images of shape (B, 3, {h}, {w}), "
                f"got {tuple(images.shape)}"
            )

    def embed_patches(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, Hf, Wf) -> (B, N, dim): the patch embedding, patches in row-major grid order.

        The official model flattens each (ph, pw) patch in (row, column, channel) order and applies
        one Linear (`reference_form`). By default that Linear is computed as a convolution with
        kernel = stride = the patch size, its weight (dim, ph * pw * C) viewed as (dim, C, ph, pw):
        same function, same parameters, but no 6-D transpose of the (B, C, Hf, Wf) features (in the
        exported graph that one Transpose took 3% of a call); only the (B, dim, N) result is transposed.
        """
        b, c, fh, fw = features.shape
        ph, pw = self.config.patch_hw
        if self.reference_form:
            x = features.reshape(b, c, fh // ph, ph, fw // pw, pw).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, ph, pw, C)
            return self.patch_embed(x.reshape(b, (fh // ph) * (fw // pw), ph * pw * c))
        weight = self.patch_embed.weight.reshape(-1, ph, pw, c).permute(0, 3, 1, 2)
        x = F.conv2d(features, weight, self.patch_embed.bias, stride=(ph, pw))  # (B, dim, gh, gw)
        return x.flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_input(images)
        cfg = self.config
        b = images.shape[0]
        visual = self.embed_patches(self.backbone(images))  # (B, N, dim)
        tokens = torch.cat((self.keypoint_token.expand(b, -1, -1), visual), dim=1)  # (B, J + N, dim)
        # The position table goes on the visual tokens only, added out of place (no slice write).
        pos = torch.cat((self.pos_embedding.new_zeros(1, cfg.num_joints, cfg.dim), self.pos_embedding), dim=1)

        x = tokens + pos
        keypoint_outputs = []
        last = self.encoders[-1][-1]
        for encoder in self.encoders:
            for i, layer in enumerate(encoder):
                # "sine-full": re-add the table before every layer but the first of each encoder
                # (the index restarts per encoder, so L re-adds 2 x (depth - 1) times fewer than
                # it would with one long encoder).
                if i > 0:
                    x = x + pos
                # Only the keypoint tokens of the very last layer are read (by the head): its visual
                # tokens are not computed (S-v2: 768 of 785 query rows), unless the explain tooling
                # records that layer's full attention matrix or the reference form is asked for.
                pruned = layer is last and not (self.reference_form or layer.attn.probe._forward_hooks)
                x = layer(x, cfg.num_joints if pruned else None)
            keypoint_outputs.append(x[:, : cfg.num_joints])  # (B, J, dim)

        if cfg.head_hidden is None:
            # L: the keypoint tokens after each encoder, concatenated along channels.
            heads_in = torch.cat(keypoint_outputs, dim=2)  # (B, J, groups * dim)
        else:
            heads_in = keypoint_outputs[-1]
        heatmaps = self.head(heads_in)  # (B, J, h * w)
        return heatmaps.reshape(b, cfg.num_joints, cfg.heatmap_hw[0], cfg.heatmap_hw[1])
