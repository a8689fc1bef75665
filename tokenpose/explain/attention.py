"""Read TokenPose's attention without touching its forward: the quantities of the paper's §4 figures.

Every `Attention` layer runs the fused `scaled_dot_product_attention`, which never forms the
probabilities; while a hook is on its no-op `probe` it also computes the explicit softmaxed
probabilities `(B, heads, N, N)` and passes them through the probe. `record_attention` hooks those
probes for the duration of a `with` block and removes the hooks afterwards, so the normal forward
(and every exported graph) never computes them. Token order
inside N = J + gh * gw: the J keypoint tokens first, then the visual tokens in row-major order of
`config.token_grid_hw`. Layers are numbered 0 .. total_layers - 1 across encoder groups (the L
variants run three encoders of `depth` layers each, in sequence).

From the captured probabilities:

* `keypoint_to_visual`: attention of each keypoint token on the visual tokens, on the token grid
  (paper Figure 3);
* `keypoint_to_keypoint`: attention among keypoint tokens (Figure 5);
* `token_similarity`: softmax(K K^T / sqrt(d)) of the learned input keypoint tokens, normalised
  per column (Figure 4);
* `top_constraints`: the two keypoints each keypoint attends to most in the last layer, itself
  excluded (Table 8).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tokenpose.data.transforms import box_to_center_scale, crop_person, preprocess_crops
from tokenpose.models.config import ModelConfig

__all__ = [
    "AttentionRecord",
    "Explanation",
    "attention_probes",
    "capture_attention",
    "explain_image",
    "keypoint_to_keypoint",
    "keypoint_to_visual",
    "layer_labels",
    "record_attention",
    "resolve_keypoints",
    "token_similarity",
    "top_constraints",
]


def attention_probes(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The `probe` module of every attention layer, in forward order (length `total_layers`).

    Encoder group g, layer i has global index g * depth + i.
    """
    return [layer.attn.probe for encoder in model.encoders for layer in encoder]


def layer_labels(config: ModelConfig) -> list[str]:
    """One label per layer, numbered 1 .. total_layers across encoder groups.

    One encoder: "layer 1" ... "layer 12". Several (L variants): "layer 3 (enc 2.1)", i.e. the
    third layer overall, first layer of the second encoder.
    """
    if config.encoder_groups == 1:
        return [f"layer {i + 1}" for i in range(config.total_layers)]
    return [
        f"layer {g * config.depth + i + 1} (enc {g + 1}.{i + 1})"
        for g in range(config.encoder_groups)
        for i in range(config.depth)
    ]


class AttentionRecord:
    """What `record_attention` collects: per layer, the probabilities of each forward call."""

    def __init__(self, num_layers: int, average_heads: bool) -> None:
        self.average_heads = average_heads
        self.calls: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]

    def hook(self, index: int):
        def store(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            probs = output.detach()  # (B, heads, N, N)
            self.calls[index].append(probs.mean(dim=1, keepdim=True) if self.average_heads else probs)

        return store

    def stacked(self, call: int = -1) -> torch.Tensor:
        """Attention of one forward call, `(L, B, heads, N, N)` (heads = 1 when averaged)."""
        if any(len(c) == 0 for c in self.calls):
            raise RuntimeError("no attention recorded: run the model inside `record_attention`")
        return torch.stack([c[call] for c in self.calls])


@contextlib.contextmanager
def record_attention(model: torch.nn.Module, average_heads: bool = False) -> Iterator[AttentionRecord]:
    """Hook every attention probe of `model` while the block runs; always remove the hooks.

    The hooks only read (they return None) and the output still comes from the fused kernel, so
    outputs inside the block are bitwise those of the normal forward. `average_heads=True` stores the mean over heads right away (12x less memory
    for S-v2's 785 tokens).
    """
    probes = attention_probes(model)
    record = AttentionRecord(len(probes), average_heads)
    handles = [probe.register_forward_hook(record.hook(i)) for i, probe in enumerate(probes)]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture_attention(
    model: torch.nn.Module, images: torch.Tensor, average_heads: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward with attention read-out.

    images: `(B, 3, H, W)` model input. Returns heatmaps `(B, J, h, w)` (identical to
    `model(images)`) and attention probabilities `(L, B, heads, N, N)` with L = total_layers,
    N = J + gh * gw and each row summing to 1 (heads = 1 when `average_heads`).
    """
    with record_attention(model, average_heads) as record:
        heatmaps = model(images)
    return heatmaps, record.stacked()


def _head_mean(attention: torch.Tensor) -> torch.Tensor:
    """(L, B, heads, N, N) -> (L, B, N, N); (L, B, N, N) passes through."""
    return attention.mean(dim=2) if attention.dim() == 5 else attention


def keypoint_to_visual(attention: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Attention of each keypoint token on the visual tokens, averaged over heads, on the grid.

    attention: `(L, B, heads, N, N)` or head-averaged `(L, B, N, N)`.
    Returns `(L, B, J, gh, gw)` with (gh, gw) = `config.token_grid_hw`; entry [l, b, j, r, c] is the
    probability that keypoint j attends to the visual token of grid row r, column c in layer l.
    """
    j = config.num_joints
    gh, gw = config.token_grid_hw
    attn = _head_mean(attention)
    if attn.shape[-1] != j + gh * gw:
        raise ValueError(
            f"attention has {attn.shape[-1]} tokens, {config.name} has {j} + {gh}x{gw} = {j + gh * gw}"
        )
    return attn[..., :j, j:].reshape(*attn.shape[:2], j, gh, gw)


def keypoint_to_keypoint(attention: torch.Tensor, num_joints: int) -> torch.Tensor:
    """Attention among keypoint tokens, averaged over heads: `(L, B, J, J)`.

    Row i (query keypoint) holds the raw probabilities of the full softmax row over all N tokens,
    restricted to the J keypoint columns, so a row sums to less than 1 (the rest goes to visual
    tokens). These are the scores the paper reports in Table 8.
    """
    return _head_mean(attention)[..., :num_joints, :num_joints]


def token_similarity(keypoint_tokens: torch.Tensor) -> torch.Tensor:
    """Prior similarity of the learned input keypoint tokens (paper Figure 4): `(J, J)`.

    keypoint_tokens: `(J, d)` or `(1, J, d)` (`model.keypoint_token`). Computes
    softmax(K K^T / sqrt(d)) with the softmax over each column (dim 0), so every column sums to 1,
    as the paper describes. K K^T is symmetric, so row i of the result is the row-softmax of
    keypoint i's similarities, transposed.
    """
    k = keypoint_tokens.detach().reshape(-1, keypoint_tokens.shape[-1]).float()
    logits = k @ k.T / math.sqrt(k.shape[-1])  # (J, J)
    return logits.softmax(dim=0)


def top_constraints(
    keypoint_attention: torch.Tensor, names: Sequence[str], k: int = 2
) -> list[dict]:
    """The k keypoints each keypoint attends to most, itself excluded (paper Table 8).

    keypoint_attention: `(J, J)` keypoint-to-keypoint attention of one image and layer (the paper
    uses the last layer), row = query keypoint. Returns J entries
    `{"keypoint": name, "constraints": [{"keypoint": name, "score": float}, ...k]}`, highest first.
    """
    kk = keypoint_attention.detach().float().clone()
    j = kk.shape[0]
    if kk.shape != (j, j) or len(names) != j:
        raise ValueError(f"expected a ({len(names)}, {len(names)}) matrix, got {tuple(kk.shape)}")
    if not 1 <= k < j:
        raise ValueError(f"k must be between 1 and {j - 1}, got {k}")
    kk.fill_diagonal_(float("-inf"))
    scores, index = kk.topk(k, dim=1)
    return [
        {
            "keypoint": names[i],
            "constraints": [
                {"keypoint": names[int(c)], "score": float(s)} for s, c in zip(scores[i], index[i], strict=True)
            ],
        }
        for i in range(j)
    ]


def resolve_keypoints(selection: str | Sequence[str | int] | None, config: ModelConfig) -> list[int]:
    """Keypoint indices from names or 0-based indices ("nose,left_knee", "0,13", "all").

    None picks the paper's Figure 3 set where the dataset has those joints (nose/head, elbows,
    wrists, ankles). Raises ValueError naming the valid keypoints on an unknown one.
    """
    names = list(config.keypoint_names)
    if selection is None:
        wanted = ["nose", "head_top", "left_elbow", "right_elbow", "l_elbow", "r_elbow",
                  "left_wrist", "right_wrist", "l_wrist", "r_wrist",
                  "left_ankle", "right_ankle", "l_ankle", "r_ankle"]
        return [names.index(n) for n in wanted if n in names]
    items = [s.strip() for s in selection.split(",")] if isinstance(selection, str) else list(selection)
    if items == ["all"]:
        return list(range(len(names)))
    picked = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            idx = int(item)
            if not 0 <= idx < len(names):
                raise ValueError(f"keypoint index {idx} is out of range 0..{len(names) - 1}")
        elif item in names:
            idx = names.index(item)
        else:
            raise ValueError(f"unknown keypoint {item!r}; valid: {', '.join(names)} (or 'all')")
        picked.append(idx)
    if not picked:
        raise ValueError("no keypoints selected")
    return picked


@dataclass(frozen=True)
class Explanation:
    """Everything the explain figures show, for one person crop.

    crop_rgb: `(H, W, 3)` uint8 model input before normalisation; box_xywh: the box used, pixels;
    heatmaps: `(J, h, w)`; keypoints_crop: `(J, 2)` argmax (x, y) in crop pixels with confidences
    `(J,)`; visual: `(L, J, gh, gw)` keypoint-to-visual attention; keypoint: `(L, J, J)`
    keypoint-to-keypoint attention; similarity: `(J, J)` token similarity; constraints: top-2 per
    keypoint from the last layer; layer_labels: L labels.
    """

    config: ModelConfig
    crop_rgb: np.ndarray
    box_xywh: tuple[float, float, float, float]
    heatmaps: np.ndarray
    keypoints_crop: np.ndarray
    confidences: np.ndarray
    visual: np.ndarray
    keypoint: np.ndarray
    similarity: np.ndarray
    constraints: list[dict]
    layer_labels: list[str]


def check_box(box_xywh: Sequence[float], image_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box (x, y, w, h) in pixels, validated: positive size and overlapping the image."""
    if len(box_xywh) != 4:
        raise ValueError(f"a box is x,y,w,h (4 numbers), got {len(box_xywh)}")
    x, y, w, h = (float(v) for v in box_xywh)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"box {x:g},{y:g},{w:g},{h:g} has a non-finite value")
    if w <= 0 or h <= 0:
        raise ValueError(f"box {x:g},{y:g},{w:g},{h:g} must have positive width and height")
    img_h, img_w = image_hw
    if x >= img_w or y >= img_h or x + w <= 0 or y + h <= 0:
        raise ValueError(f"box {x:g},{y:g},{w:g},{h:g} lies outside the {img_w}x{img_h} image")
    return x, y, w, h


def heatmap_to_crop(points_hm: np.ndarray, config: ModelConfig) -> np.ndarray:
    """(..., 2) heatmap pixels -> crop-input pixels (both crops share centre and zoom, "size-1")."""
    (in_h, in_w), (hm_h, hm_w) = config.input_hw, config.heatmap_hw
    r = (in_w - 1) / (hm_w - 1)
    x = points_hm[..., 0] * r
    y = (points_hm[..., 1] - (hm_h - 1) / 2) * r + (in_h - 1) / 2
    return np.stack([x, y], axis=-1)


def explain_image(
    model: torch.nn.Module, image_bgr: np.ndarray, box_xywh: Sequence[float] | None = None
) -> Explanation:
    """Crop one person like the top-down pipeline, run the model once with attention read-out.

    image_bgr: `(H_img, W_img, 3)` uint8 (`read_image`); box_xywh: person box in pixels, or None
    for the whole image. The box is padded to the model's aspect ratio and by 1.25, as in
    evaluation.
    """
    cfg: ModelConfig = model.config
    img_h, img_w = image_bgr.shape[:2]
    box = check_box(box_xywh if box_xywh is not None else (0, 0, img_w, img_h), (img_h, img_w))
    center, scale = box_to_center_scale(box, cfg.aspect_ratio)
    batch = preprocess_crops(image_bgr, center[None], scale[None], cfg.input_hw)  # (1, 3, H, W)
    crop_rgb = crop_person(image_bgr, center, scale, 0.0, cfg.input_hw)[..., ::-1]
    param = next(model.parameters())
    was_training = model.training
    model.eval()  # BatchNorm running statistics, as at inference
    try:
        heatmaps, attention = capture_attention(
            model, torch.from_numpy(batch).to(param.device, param.dtype), average_heads=True
        )
    finally:
        model.train(was_training)
    visual = keypoint_to_visual(attention, cfg)[:, 0]  # (L, J, gh, gw)
    keypoint = keypoint_to_keypoint(attention, cfg.num_joints)[:, 0]  # (L, J, J)
    hm = heatmaps[0].float().cpu().numpy()  # (J, h, w)
    flat = hm.reshape(cfg.num_joints, -1)
    idx = flat.argmax(axis=1)
    peaks_hm = np.stack([idx % cfg.heatmap_hw[1], idx // cfg.heatmap_hw[1]], axis=-1).astype(np.float64)
    return Explanation(
        config=cfg,
        crop_rgb=np.ascontiguousarray(crop_rgb),
        box_xywh=box,
        heatmaps=hm,
        keypoints_crop=heatmap_to_crop(peaks_hm, cfg),
        confidences=flat.max(axis=1),
        visual=visual.float().cpu().numpy(),
        keypoint=keypoint.float().cpu().numpy(),
        similarity=token_similarity(model.keypoint_token).cpu().numpy(),
        constraints=top_constraints(keypoint[-1], cfg.keypoint_names),
        layer_labels=layer_labels(cfg),
    )
