"""Transformer building blocks and the fixed 2D sine position table.

Written export-first: plain Linear/reshape/permute/matmul and `scaled_dot_product_attention`
(which the ONNX exporter writes at opset 17 as Transpose/Mul/MatMul/Softmax/MatMul), no einsum, no
in-place writes, so the same forward runs in PyTorch, exports to ONNX and builds in TensorRT.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def sine_position_table(grid_hw: tuple[int, int], dim: int = 192, temperature: float = 10000.0) -> torch.Tensor:
    """The official "sine-full" table for a token grid, as float32 `(1, h * w, dim)`.

    Row index is `i * w + j` for grid row i and column j. Each half of the channels encodes one
    axis (y first, then x) as sin, cos, sin, cos, ... with pairs sharing a frequency; positions
    are normalised to (0, 2*pi] as `(i + 1) / (h + 1e-6) * 2*pi`. Computed in float32 with the
    same operation order as the official code so the tables agree to float32 rounding.
    """
    h, w = grid_hw
    half = dim // 2
    eps = 1e-6
    ys = torch.arange(1, h + 1, dtype=torch.float32) / (h + eps) * (2 * math.pi)  # (h,)
    xs = torch.arange(1, w + 1, dtype=torch.float32) / (w + eps) * (2 * math.pi)  # (w,)
    k = torch.arange(half, dtype=torch.float32)
    freq = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / half)  # (half,)

    def encode(v: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, half), sin on even k, cos on odd k
        angles = v[:, None] / freq
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    ey = encode(ys)[:, None, :].expand(h, w, half)
    ex = encode(xs)[None, :, :].expand(h, w, half)
    return torch.cat((ey, ex), dim=2).reshape(1, h * w, dim)


class Attention(nn.Module):
    """Multi-head self-attention with a bias-free fused qkv projection.

    The qkv weight rows are q | k | v, each split into heads with the head index outermost.
    `scale` is passed in because the S variants use dim**-0.5 rather than head_dim**-0.5.
    """

    def __init__(self, dim: int, heads: int, scale: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = scale
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        # True: the fused CPU kernel `tokenpose::attention` (tokenpose.models.fused_attention) for
        # float32 CPU inputs that need no gradient; set by `TokenPose.use_fused_attention`.
        self.fused_cpu = False
        # A no-op the explain tooling hooks to read attention probabilities; nothing else sees it.
        self.probe = nn.Identity()

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim); with `queries`, only the first `queries` tokens attend (every
        token is still a key and value): (B, queries, dim), the same rows as the full output's."""
        b, n, dim = x.shape
        if queries is not None:
            return self._first_rows(x, queries)
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, heads, N, head_dim)
        if self.probe._forward_hooks:
            # Something (tokenpose.explain) reads the probabilities: only then are the (N, N)
            # matrices materialised, beside the fused kernel, so the output stays the same.
            self.probe(self.probabilities(q, k))
        # The fused kernel never stores the (B, heads, N, N) matrix: S-v2's is 19.7 MB per image
        # and layer, which is what made eager batches slower per image than batch 1.
        out = self._attend(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))

    def _first_rows(self, x: torch.Tensor, queries: int) -> torch.Tensor:
        """The attention output of the first `queries` tokens only: q for those rows, k and v for all."""
        b, n, dim = x.shape
        heads, head_dim = self.heads, dim // self.heads
        q = F.linear(x[:, :queries], self.qkv.weight[:dim]).reshape(b, queries, heads, head_dim).transpose(1, 2)
        kv = F.linear(x, self.qkv.weight[dim:]).reshape(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        out = self._attend(q, kv[0], kv[1])  # (B, heads, queries, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, queries, dim))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) v: the fused CPU kernel when switched on and usable, else SDPA."""
        if (self.fused_cpu and q.device.type == "cpu" and q.dtype == torch.float32
                and not (torch.is_grad_enabled() and q.requires_grad)):
            return torch.ops.tokenpose.attention(q, k, v, self.scale)
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)

    def probabilities(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale): (B, heads, N, head_dim) twice -> (B, heads, N, N), rows summing to 1."""
        # Scaling q rather than the (N, N) logits: same result, a fraction of the work.
        return torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as the official model
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + Attn(LN(x)), then x + MLP(LN(x)). LayerNorm eps 1e-5."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, scale: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads, scale)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim), or with `queries` only the first `queries` rows of it: each
        row after attention depends on its own token alone (LayerNorm, MLP and the residuals are
        per token), so the other rows need not be computed when nothing reads them."""
        x = (x if queries is None else x[:, :queries]) + self.attn(self.norm1(x), queries)
        return x + self.mlp(self.norm2(x))
