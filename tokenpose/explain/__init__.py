"""Explain a TokenPose prediction: attention maps and learned keypoint constraints (paper §4).

`explain_image(model, image_bgr, box)` runs one forward with the attention read out through the
layers' probes (hooks removed afterwards) and returns an `Explanation`; `write_explanation` saves
the paper's Figures 3, 4, 5 as PNG and Table 8 as JSON.
"""

from __future__ import annotations

from tokenpose.explain.attention import (
    Explanation,
    capture_attention,
    explain_image,
    keypoint_to_keypoint,
    keypoint_to_visual,
    layer_labels,
    record_attention,
    resolve_keypoints,
    token_similarity,
    top_constraints,
)
from tokenpose.explain.figures import OUTPUT_FILES, write_explanation

__all__ = [
    "OUTPUT_FILES",
    "Explanation",
    "capture_attention",
    "explain_image",
    "keypoint_to_keypoint",
    "keypoint_to_visual",
    "layer_labels",
    "record_attention",
    "resolve_keypoints",
    "token_similarity",
    "top_constraints",
    "write_explanation",
]
