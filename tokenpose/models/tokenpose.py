"""The TokenPose model: backbone -> visual tokens + keypoint tokens -> encoder(s) -> heatmaps."""

from __future__ import annotations

import torch
from torch import nn

from tokenpose.errors import InputShapeError
from tokenpose.models.backbones import build_backbone
from tokenpose.models.config import ModelConfig, get_config
from tokenpose.models.layers import EncoderLayer, sine_position_table


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

    def check_input(self, images: torch.Tensor) -> None:
        """Raise a one-line error unless `images` is (B, 3, H, W) at this variant's input size."""
        h, w = self.config.input_hw
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (h, w):
            raise InputShapeError(
                f"TokenPose {self.config.name} expects images of shape (B, 3, {h}, {w}), "
                f"got {tuple(images.shape)}"
            )

    def patchify(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, Hf, Wf) -> (B, N, ph * pw * C), patches in row-major grid order.

        Each patch is flattened in (row, column, channel) order, channel fastest, as the
        official patch embedding expects.
        """
        b, c, fh, fw = features.shape
        ph, pw = self.config.patch_hw
        gh, gw = fh // ph, fw // pw
        x = features.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, ph, pw, C)
        return x.reshape(b, gh * gw, ph * pw * c)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_input(images)
        cfg = self.config
        b = images.shape[0]
        visual = self.patch_embed(self.patchify(self.backbone(images)))  # (B, N, dim)
        tokens = torch.cat((self.keypoint_token.expand(b, -1, -1), visual), dim=1)  # (B, J + N, dim)
        # The position table goes on the visual tokens only, added out of place (no slice write).
        pos = torch.cat((self.pos_embedding.new_zeros(1, cfg.num_joints, cfg.dim), self.pos_embedding), dim=1)

        x = tokens + pos
        keypoint_outputs = []
        for encoder in self.encoders:
            for i, layer in enumerate(encoder):
                # "sine-full": re-add the table before every layer but the first of each encoder
                # (the index restarts per encoder, so L re-adds 2 x (depth - 1) times fewer than
                # it would with one long encoder).
                if i > 0:
                    x = x + pos
                x = layer(x)
            keypoint_outputs.append(x[:, : cfg.num_joints])  # (B, J, dim)

        if cfg.head_hidden is None:
            # L: the keypoint tokens after each encoder, concatenated along channels.
            heads_in = torch.cat(keypoint_outputs, dim=2)  # (B, J, groups * dim)
        else:
            heads_in = keypoint_outputs[-1]
        heatmaps = self.head(heads_in)  # (B, J, h * w)
        return heatmaps.reshape(b, cfg.num_joints, cfg.heatmap_hw[0], cfg.heatmap_hw[1])
