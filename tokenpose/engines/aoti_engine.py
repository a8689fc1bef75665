"""AOTInductor engine: a `.pt2` package from `tokenpose-export --aoti`, run in this Python process.

It loads the same compiled model the C++ example (`cpp/`, libtorch's `AOTIModelPackageLoader`)
loads, so `PosePredictor(AotiEngine.from_file(p))` is the Python reference the C++ parity test
compares against. Loading verifies the manifest beside the package (`<file>.pt2.json`: presence,
sha256, format) and reads the variant, sizes and batch range from it. On a CPU the process's malloc
keeps freed activations for the next call (`tokenpose.engines.cpu.retain_freed_memory`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenpose.engines.base import EngineMeta, check_engine_input, check_precision, reject_options
from tokenpose.engines.cpu import retain_freed_memory
from tokenpose.errors import TokenPoseError
from tokenpose.manifest import Manifest, read_manifest, unreadable_artifact, verify_manifest
from tokenpose.models.fused_attention import FusedAttentionError, load_library


@contextlib.contextmanager
def _held_torch_logs():
    """Hold back what torch logs while a package loads: when the load fails, the one-line error
    says why, and torch's own lines ("Loading outdated pt2 file") would make it two.
    Yields the list of held records for the caller to re-emit after a successful load."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if not any(record is r for r in held):  # one record reaches every handler up the hierarchy
            held.append(record)
        return False

    # torch installs its handlers on "torch" and on sub-loggers such as "torch._inductor"
    loggers = [lg for name, lg in logging.root.manager.loggerDict.items()
               if isinstance(lg, logging.Logger) and (name == "torch" or name.startswith("torch."))]
    handlers = {h for lg in loggers for h in lg.handlers}
    for h in handlers:
        h.addFilter(hold)
    try:
        yield held
    finally:
        for h in handlers:
            h.removeFilter(hold)


class AotiEngine:
    """A compiled AOTInductor package behind the Engine protocol.

    `__call__`: (B, 3, H, W) float32 crops normalised as `meta` says -> (B, J, h, w) float32
    heatmaps (numpy, host). `meta` is read from the manifest; max_batch / min_batch are the bounds
    of the package's dynamic batch dimension (its manifest's batch range): other batches are
    rejected before they reach the compiled code (`PosePredictor` pads a short chunk up to min_batch).
    """

    name = "aoti"
    precision = "fp32"

    def __init__(self, runner: Any, manifest: Manifest, path: Path, meta: EngineMeta, device: torch.device) -> None:
        self.runner = runner
        self.path = path
        self.device = device
        self.manifest: dict[str, Any] = manifest.to_dict()
        self.precision = manifest.precision
        self.meta = meta  # its batch range is the package's: it rejects batches outside it
        self.min_batch, self.max_batch = self.meta.min_batch, self.meta.max_batch

    @property
    def config(self) -> EngineMeta:
        """`meta`, under the name callers written against a ModelConfig use (sizes, joints, dataset)."""
        return self.meta

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

        precision = unused.pop("precision", None)
        compile_ = unused.pop("compile", None)
        reject_options(unused, "aoti")
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
        meta = EngineMeta.from_manifest(manifest, path)
        if manifest.op_library:  # the package calls tokenpose::attention: its library first
            try:
                load_library(path.parent / manifest.op_library)
            except FusedAttentionError as exc:
                raise TokenPoseError(f"{path}: the package calls {manifest.op_library}, which it needs beside it: "
                                     f"{exc} (copy it along, or re-export with fused_attention=False)") from None
        try:
            with _held_torch_logs() as held:
                runner = aoti_load_package(str(path))
        except Exception as exc:  # torch raises RuntimeError with multi-line C++ traces
            raise TokenPoseError(
                f"{unreadable_artifact(path, 'AOTInductor package', exc)} (it must be loaded by the torch version "
                f"that compiled it, {manifest.versions.get('torch')}, on a machine with the same CPU ISA / GPU)"
            ) from None
        for record in held:  # the package loaded: its warnings (an outdated format...) are worth showing
            logging.getLogger(record.name).handle(record)
        package_device = runner.get_metadata().get("AOTI_DEVICE_KEY", "cpu")
        if device is not None and device != "auto" and torch.device(device).type != package_device:
            raise TokenPoseError(f"{path}: the package was compiled for {package_device!r}, not {device!r}")
        if package_device == "cpu":
            retain_freed_memory()
        return cls(runner, manifest, path, meta, torch.device(package_device))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 crops normalised as `meta` says -> (B, J, h, w) float32 heatmaps."""
        x = check_engine_input(images, self.meta, self.name)
        if x.shape[0] < self.min_batch:
            raise TokenPoseError(f"{self.path}: batch {x.shape[0]} is below the package's minimum {self.min_batch}")
        tensor = torch.from_numpy(x).to(self.device)
        with torch.inference_mode():
            out = self.runner(tensor)
        if isinstance(out, list | tuple):
            out = out[0]
        return out.float().cpu().numpy()

    def __repr__(self) -> str:
        return f"AotiEngine({self.path.name}, {self.meta.variant}, {self.device.type})"
