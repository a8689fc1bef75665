"""CNN backbones: the S stem and the first three stages of HRNet (W32 for B, W48 for L).

Submodule names follow HRNet's (`conv1`, `layer1`, `transition1`, `stage2`, ...) so that the
official TokenPose checkpoints and the ImageNet HRNet checkpoints map onto them by prefix alone.
All BatchNorms use eps 1e-5 and momentum 0.1.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)) if cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Stem(nn.Module):
    """Two stride-2 3x3 convs then four Bottlenecks: (B, 3, H, W) -> (B, 256, H/4, W/4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Bottleneck(64, 64), *(Bottleneck(256, 64) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.layer1(x)


class FuseModule(nn.Module):
    """One HRNet module: parallel BasicBlock branches, then cross-resolution fusion by summation.

    Fusion into branch i from branch j: j > i is 1x1 conv + BN + nearest upsample by 2**(j-i);
    j < i is a chain of i-j stride-2 3x3 conv + BN, with ReLU on all but the last. With
    `all_outputs=False` only branch 0 is fused and returned (HRNet's last module of a stage).
    """

    def __init__(self, channels: list[int], blocks: int, all_outputs: bool) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(c) for _ in range(blocks))) for c in channels
        )
        self.fuse_layers = nn.ModuleList()
        for i in range(n if all_outputs else 1):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(
                        nn.Conv2d(channels[j], channels[i], 1, bias=False),
                        nn.BatchNorm2d(channels[i]),
                        nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                    ))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = [conv_bn(channels[j], channels[j], 3, 2) for _ in range(i - j - 1)]
                    steps.append(conv_bn(channels[j], channels[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for row in self.fuse_layers:
            y = row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + row[j](xs[j])
            out.append(self.relu(y))
        return out


class HRNetStages(Stem):
    """HRNet stem + stages 1-3, returning the highest-resolution branch.

    (B, 3, H, W) -> (B, width, H/4, W/4). The stem and stage 1 are the S stem's layers; stage 2
    has one module of two branches, stage 3 four modules of three branches; each branch holds
    four BasicBlocks.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        c2 = [width, 2 * width]
        c3 = [width, 2 * width, 4 * width]
        # New branches come from the previous stage's lowest-resolution output (stride-2 convs);
        # existing branches pass through unchanged, or through a 3x3 conv when the width changes.
        self.transition1 = nn.ModuleList([conv_bn(256, c2[0], 3, 1), nn.Sequential(conv_bn(256, c2[1], 3, 2))])
        self.stage2 = nn.Sequential(FuseModule(c2, 4, all_outputs=True))
        self.transition2 = nn.ModuleList([nn.Identity(), nn.Identity(), nn.Sequential(conv_bn(c2[1], c3[2], 3, 2))])
        self.stage3 = nn.Sequential(*(FuseModule(c3, 4, all_outputs=i < 3) for i in range(4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)  # (B, 256, H/4, W/4)
        ys = self.stage2([t(x) for t in self.transition1])
        xs = [self.transition2[0](ys[0]), self.transition2[1](ys[1]), self.transition2[2](ys[-1])]
        for module in self.stage3:
            xs = module(xs)
        return xs[0]


def build_backbone(kind: str) -> nn.Module:
    """The backbone module for a config's `backbone` field; identity for T (patches from pixels)."""
    if kind == "pixels":
        return nn.Identity()
    if kind == "stem":
        return Stem()
    if kind == "hrnet_w32":
        return HRNetStages(32)
    if kind == "hrnet_w48":
        return HRNetStages(48)
    raise ValueError(f"unknown backbone {kind!r}")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of `model` with every BatchNorm2d folded into the Conv2d it follows.

    Eval-mode BatchNorm is an affine map per channel, so `bn(conv(x))` is one convolution with
    scaled weights and a bias: the same function with one pass over the activations fewer (the
    S-v2 stem runs at (B, 256, 64, 48)). The pairs are the ones this module builds: `convN` then
    `bnN` on a block, and a Conv2d directly followed by a BatchNorm2d in an `nn.Sequential`. The
    copy is for inference only (its state_dict no longer has the BatchNorm keys); `model` is untouched.
    """
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        for i in (1, 2, 3):
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{i}", nn.Identity())
        if isinstance(module, nn.Sequential):
            for j in range(len(module) - 1):
                if isinstance(module[j], nn.Conv2d) and isinstance(module[j + 1], nn.BatchNorm2d):
                    module[j] = fuse_conv_bn_eval(module[j], module[j + 1])
                    module[j + 1] = nn.Identity()
    return model
