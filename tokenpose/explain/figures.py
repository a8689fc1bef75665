"""Matplotlib figures of an `Explanation` (paper Figures 3, 4, 5) and the Table 8 JSON.

Rendered with the non-interactive Agg backend through `matplotlib.figure.Figure`, so nothing here
needs a display or touches pyplot's global state.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tokenpose.explain.attention import Explanation
from tokenpose.files import atomic_write, ensure_writable_dir

__all__ = [
    "OUTPUT_FILES",
    "constraints_json",
    "keypoint_to_keypoint_figure",
    "keypoint_to_visual_figure",
    "token_similarity_figure",
    "write_explanation",
]

OUTPUT_FILES = {
    "visual": "keypoint_to_visual.png",
    "keypoint": "keypoint_to_keypoint.png",
    "similarity": "token_similarity.png",
    "constraints": "constraints.json",
}


def _label(name: str) -> str:
    return name.replace("_", " ")


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def keypoint_to_visual_figure(
    expl: Explanation, keypoints: Sequence[int], layers: Sequence[int] | None = None
) -> Figure:
    """Figure 3: one row per chosen keypoint, one column per layer, over the person crop.

    Each map is the head-averaged attention of the keypoint token on the visual tokens `(gh, gw)`,
    upsampled bilinearly to the crop `(H, W)` (each token covers one patch of the crop) and scaled
    by its own maximum, which the panel prints, so early diffuse layers stay visible. The first
    column shows the crop with the predicted location (heatmap argmax) and its confidence.
    `keypoints`: indices of the rows; `layers`: 0-based layer indices of the columns (default all).
    """
    cfg = expl.config
    names = cfg.keypoint_names
    layers = list(range(expl.visual.shape[0])) if layers is None else list(layers)
    num_layers = len(layers)
    in_h, in_w = cfg.input_hw
    panel_w = 1.35
    panel_h = panel_w * in_h / in_w
    title_h, row_gap = 0.75, 0.28
    fig_h = (panel_h + row_gap) * len(keypoints) + title_h
    fig = _new_figure(panel_w * (num_layers + 1) * 1.06 + 1.3, fig_h)
    grid = fig.add_gridspec(len(keypoints), num_layers + 2, width_ratios=[1] * (num_layers + 1) + [0.08],
                            left=0.5 / fig.get_figwidth(), right=1 - 0.65 / fig.get_figwidth(),
                            top=1 - title_h / fig_h, bottom=0.08 / fig_h, wspace=0.06,
                            hspace=row_gap / panel_h)
    # One pre-blended RGB image per panel: far faster to render than an alpha overlay per panel.
    gray = cv2.cvtColor(expl.crop_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None] / 255.0
    cmap = colormaps["jet"]
    norm = Normalize(0.0, 1.0)
    for row, j in enumerate(keypoints):
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(expl.crop_rgb)
        x, y = expl.keypoints_crop[j]
        ax.plot([x], [y], marker="o", markersize=7, markerfacecolor="none", markeredgecolor="red", mew=2)
        ax.set_title(f"prediction ({expl.confidences[j]:.2f})", fontsize=7)
        ax.set_ylabel(_label(names[j]), fontsize=10, fontweight="bold")
        ax.set_xticks([])
        ax.set_yticks([])
        for col, layer in enumerate(layers):
            ax = fig.add_subplot(grid[row, col + 1])
            amap = expl.visual[layer, j]
            peak = float(amap.max())
            up = cv2.resize(amap / max(peak, 1e-12), (in_w, in_h), interpolation=cv2.INTER_LINEAR)
            blend = 0.5 * cmap(norm(up))[..., :3] + 0.5 * gray
            ax.imshow((blend * 255).astype(np.uint8))
            title = expl.layer_labels[layer] + "\n" if row == 0 else ""
            ax.set_title(f"{title}max {peak:.3f}", fontsize=7)
            ax.axis("off")
    bar = fig.colorbar(ScalarMappable(norm, cmap), cax=fig.add_subplot(grid[:, -1]))
    bar.set_label("attention / panel max (drawn at 50% over the grey crop)", fontsize=9)
    fig.suptitle(
        f"TokenPose-{cfg.name}: keypoint-token attention on visual tokens per layer (mean over {cfg.heads} heads)",
        fontsize=12, y=1 - 0.2 / fig_h,
    )
    return fig


def _matrix_axes(ax, names: Sequence[str], show_x: bool, show_y: bool) -> None:
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, [_label(n) for n in names] if show_x else [], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [_label(n) for n in names] if show_y else [], fontsize=7)


def keypoint_to_keypoint_figure(expl: Explanation, layers: Sequence[int] | None = None, ncols: int = 4) -> Figure:
    """Figure 5: head-averaged keypoint-to-keypoint attention, one `(J, J)` matrix per layer.

    Row = query keypoint, column = attended keypoint; values are the raw attention probabilities
    (the rest of each row goes to visual tokens), one colour bar per layer. `layers`: 0-based
    layer indices to draw (default all).
    """
    cfg = expl.config
    names = cfg.keypoint_names
    layers = list(range(expl.keypoint.shape[0])) if layers is None else list(layers)
    ncols = min(ncols, len(layers))
    nrows = -(-len(layers) // ncols)
    fig_h = 3.9 * nrows + 2.2
    fig = _new_figure(4.6 * ncols + 0.8, fig_h)
    fig.subplots_adjust(left=0.09, right=0.97, top=1 - 1.1 / fig_h, bottom=1.1 / fig_h,
                        wspace=0.35, hspace=0.18)
    for n, layer in enumerate(layers):
        r, c = divmod(n, ncols)
        ax = fig.add_subplot(nrows, ncols, n + 1)
        image = ax.imshow(expl.keypoint[layer], cmap="viridis", vmin=0.0)
        last_in_column = r == nrows - 1 or (r == nrows - 2 and n + ncols >= len(layers))
        _matrix_axes(ax, names, show_x=last_in_column, show_y=c == 0)
        ax.set_title(expl.layer_labels[layer], fontsize=10)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(
        f"TokenPose-{cfg.name}: keypoint-to-keypoint attention per layer (mean over {cfg.heads} heads)\n"
        "row: keypoint token that attends, column: keypoint token attended to",
        fontsize=12, y=1 - 0.2 / fig_h, va="top",
    )
    return fig


def token_similarity_figure(expl: Explanation) -> Figure:
    """Figure 4: softmax(K K^T / sqrt(d)) of the learned input keypoint tokens, per column."""
    cfg = expl.config
    names = cfg.keypoint_names
    fig = _new_figure(9.0, 8.2)
    ax = fig.add_axes((0.2, 0.2, 0.62, 0.68))
    sim = expl.similarity
    # A token is always most similar to itself, and barely trained tokens give values all close
    # to 1/J: spanning the colours from the smallest to the largest off-diagonal value keeps the
    # relations between different keypoints visible (the diagonal may saturate; numbers are exact).
    off_diagonal = sim[~np.eye(len(sim), dtype=bool)]
    vmin, vmax = float(sim.min()), float(off_diagonal.max()) if off_diagonal.size else float(sim.max())
    if vmax <= vmin:
        vmax = vmin + 1e-6
    image = ax.imshow(sim, cmap="viridis", vmin=vmin, vmax=vmax)
    _matrix_axes(ax, names, show_x=True, show_y=True)
    if len(names) <= 20:
        digits = 3 if vmax - vmin > 0.02 else 4
        for (i, k), v in np.ndenumerate(sim):
            ax.text(k, i, f"{v:.{digits}f}".lstrip("0"), ha="center", va="center", fontsize=5.5 if digits == 3 else 5,
                    color="black" if v > vmin + 0.6 * (vmax - vmin) else "white")
    bar = fig.colorbar(image, cax=fig.add_axes((0.85, 0.2, 0.025, 0.68)),
                       extend="max" if float(sim.max()) > vmax else "neither")
    bar.set_label("softmax over each column (colours span the off-diagonal values)", fontsize=8)
    ax.set_title(
        f"TokenPose-{cfg.name}: similarity of the learned keypoint tokens\n"
        f"softmax(K Kᵀ / √{cfg.dim}), normalised per column (columns sum to 1)",
        fontsize=11,
    )
    return fig


def constraints_json(expl: Explanation) -> dict:
    """Table 8 as a JSON-ready dict: top-2 keypoints per keypoint from the last layer."""
    return {
        "variant": expl.config.name,
        "layer": expl.layer_labels[-1],
        "box_xywh": list(expl.box_xywh),
        "note": "head-averaged attention probability of the last layer, self excluded",
        "keypoints": expl.constraints,
    }


def _png_bytes(fig: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_explanation(
    expl: Explanation, out_dir: str | Path, keypoints: Sequence[int], dpi: int = 100
) -> dict[str, Path]:
    """Write the four outputs (`OUTPUT_FILES`) into `out_dir`; returns kind -> path.

    The folder is checked (NotWritableError naming it) before the figures are rendered, and all
    are rendered before the first file is written, so a failure while rendering writes no file;
    each file is replaced atomically: never a half-written one.
    """
    out = ensure_writable_dir(out_dir)
    contents = {
        "visual": _png_bytes(keypoint_to_visual_figure(expl, keypoints), dpi),
        "keypoint": _png_bytes(keypoint_to_keypoint_figure(expl), dpi),
        "similarity": _png_bytes(token_similarity_figure(expl), dpi),
        "constraints": (json.dumps(constraints_json(expl), indent=2) + "\n").encode(),
    }
    paths = {kind: out / name for kind, name in OUTPUT_FILES.items()}
    for kind, data in contents.items():
        with atomic_write(paths[kind], "wb") as f:
            f.write(data)
    return paths
