"""Shared test helpers: fixture paths and the reference weight-fill procedure."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"
COCO_MINI = FIXTURES / "coco_mini"
MPII_MINI = FIXTURES / "mpii_mini"

# Our variant name -> the reference files' name.
REFERENCE_NAMES = {
    "t": "t", "s-v1": "s_v1", "s-v2": "s_v2", "b": "b",
    "l-d24": "l_d24", "l-d24-384": "l_d24_384", "l-d6-mpii": "l_d6",
}


def fill_tensor(key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The reference weight fill (reference README §2.1): depends only on key, shape and dtype."""
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    if key.endswith(".running_mean"):
        arr = rng.normal(0.0, 0.1, shape)
    elif key.endswith(".running_var"):
        arr = rng.uniform(0.5, 1.5, shape)
    elif len(shape) == 1 and key.endswith(".weight"):
        arr = 1.0 + rng.normal(0.0, 0.1, shape)
    elif len(shape) == 1:
        arr = rng.normal(0.0, 0.1, shape)
    elif key.endswith("keypoint_token") or key.endswith("pos_embedding"):
        arr = rng.normal(0.0, 1.0, shape)
    else:
        fan_in = int(np.prod(shape[1:]))
        gain = 0.5 if len(shape) == 4 else 1.0
        arr = rng.normal(0.0, gain / np.sqrt(fan_in), shape)
    return arr.astype(np.float32)


def manifest(reference_name: str) -> dict:
    with open(REFERENCE / "official_state_dict_keys.json") as f:
        return json.load(f)[reference_name]


def filled_official_state_dict(reference_name: str) -> dict[str, torch.Tensor]:
    """Official-layout state_dict of a variant filled by the reference procedure."""
    return {
        e["key"]: torch.from_numpy(np.asarray(fill_tensor(e["key"], tuple(e["shape"]), e["dtype"])))
        for e in manifest(reference_name)["entries"]
    }


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    return COCO_MINI


@pytest.fixture(scope="session")
def mpii_mini() -> Path:
    return MPII_MINI


def pytest_sessionstart(session) -> None:
    """Build the fused attention kernel before any test runs (~20 s once per torch version, then
    cached): otherwise the first engine or CLI test to need it would pay for it, and print the
    build's one-line notice into output that some tests compare."""
    from tokenpose.models import fused_attention

    if fused_attention.unavailable_reason() is None:
        try:
            fused_attention.build_library(log=lambda _msg: None)
        except fused_attention.FusedAttentionError:
            pass  # tests/test_fused_attention.py reports it

