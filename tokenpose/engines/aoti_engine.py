"""AOTInductor engine: a `.pt2` package from `tokenpose-export --aoti`, run in this Python process.

It loads the same compiled model the C++ example (`cpp/`, libtorch's `AOTIModelPackageLoader`)
loads, so `PosePredictor(AotiEngine.from_file(p))` is the Python reference the C++ parity test
compares against. Loading verifies the manifest beside the package (`<file>.pt2.json`: presence,
sha256, format) and reads the variant, sizes and batch range from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenpose.engines.base import check_engine_input
from tokenpose.errors import TokenPoseError
from tokenpose.models.config import ModelConfig


class AotiEngine:
    """A compiled AOTInductor package behind the Engine protocol.

    `__call__`: (B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps (numpy, host).
    max_batch / min_batch: the bounds of the package's dynamic batch dimension (its manifest's batch
    range); other batches are rejected before they reach the compiled code (`PosePredictor` pads
    a short chunk up to min_batch).
    """

    name = "aoti"
    precision = "fp32"

    def __init__(self, runner: Any, manifest, path: Path, config: ModelConfig, device: torch.device) -> None:
        self.runner = runner
        self.path = path
        self.config = config
        self.device = device
        self.manifest: dict[str, Any] = manifest.to_dict()
        self.precision = manifest.precision
        self.max_batch: int | None = int(manifest.batch.get("max") or 0) or None
        self.min_batch: int = max(1, int(manifest.batch.get("min") or 1))  # the package rejects smaller batches

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, verify: bool = True, device: str | None = None,
                  **unused: Any) -> AotiEngine:
        """Open `path` (a `.pt2`) and its manifest `path.json`.

        verify: check the manifest's sha256 against the file. device: "cpu" / "cuda" / None; the
        package runs only on the device it was compiled for, so this is a check, not a choice.
        precision: None or the package's own precision (it is fixed at export; another one is an
        error, as for ONNX models). compile: None/False only (the package is already compiled).
        Any other option is an error, never silently ignored.
        """
        from torch._inductor import aoti_load_package

        from tokenpose.engines.onnx_engine import check_precision, config_from_manifest
        from tokenpose.engines.torch_engine import _reject_options
        from tokenpose.manifest import read_manifest, verify_manifest

        precision = unused.pop("precision", None)
        compile_ = unused.pop("compile", None)
        _reject_options(unused, "aoti")
        if compile_:  # False / None: nothing asked
            raise TokenPoseError(
                f"{path}: an AOTInductor package is already compiled ahead of time; compile=True does not apply "
                "(load the .pth checkpoint to use torch.compile)"
            )
        path = Path(path)
        manifest = verify_manifest(path) if verify else read_manifest(path)
        if manifest.format != "pt2":
            raise TokenPoseError(
                f"{path}: its manifest describes a {manifest.format!r} artifact, not an AOTInductor package"
            )
        check_precision(path, manifest, precision)
        config = config_from_manifest(manifest, path)
        try:
            runner = aoti_load_package(str(path))
        except Exception as exc:  # torch raises RuntimeError with multi-line C++ traces
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise TokenPoseError(
                f"{path}: cannot load the AOTInductor package ({reason}); it must be loaded by the torch "
                f"version that compiled it ({manifest.versions.get('torch')}) on a machine with the same CPU ISA / GPU"
            ) from None
        package_device = runner.get_metadata().get("AOTI_DEVICE_KEY", "cpu")
        if device is not None and device != "auto" and torch.device(device).type != package_device:
            raise TokenPoseError(f"{path}: the package was compiled for {package_device!r}, not {device!r}")
        return cls(runner, manifest, path, config, torch.device(package_device))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 normalised RGB -> (B, J, h, w) float32 heatmaps."""
        x = check_engine_input(images, self.config, self.max_batch, self.name)
        if x.shape[0] < self.min_batch:
            raise TokenPoseError(f"{self.path}: batch {x.shape[0]} is below the package's minimum {self.min_batch}")
        tensor = torch.from_numpy(x).to(self.device)
        with torch.inference_mode():
            out = self.runner(tensor)
        if isinstance(out, list | tuple):
            out = out[0]
        return out.float().cpu().numpy()

    def __repr__(self) -> str:
        return f"AotiEngine({self.path.name}, {self.config.name}, {self.device.type})"
