"""`tokenpose train`: train a variant on COCO or MPII (one process, or torchrun for DDP)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tokenpose.cli.common import OnBadOpt, OutOpt, VariantOpt, friendly_errors, standalone, warnings_as_lines

PathOpt = Path | None


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(m) for m in text.replace(" ", "").split(",") if m)
    except ValueError:
        raise ValueError(f"--milestones must be comma-separated epochs like 200,260, got {text!r}") from None


@friendly_errors
def command(
    variant: VariantOpt = "t",
    data_root: Annotated[PathOpt, typer.Option(help="COCO root (annotations/*.json + images/) or MPII root.")] = None,
    out: OutOpt = Path("runs/train"),
    epochs: Annotated[int, typer.Option(help="Epochs in all (official: 300).")] = 300,
    batch_size: Annotated[int | None, typer.Option(help="Per process; default: the official per-GPU batch.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from last.pth.")] = False,
    resume_from: Annotated[PathOpt, typer.Option(help="Continue from this checkpoint instead.")] = None,
    amp: Annotated[str, typer.Option(help="off | fp16 (CUDA) | bf16.")] = "off",
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    milestones: Annotated[str, typer.Option(help="MultiStepLR epochs, comma-separated.")] = "200,260",
    gamma: Annotated[float, typer.Option(help="MultiStepLR factor.")] = 0.1,
    grad_clip: Annotated[float | None, typer.Option(help="Max gradient norm (default: none).")] = None,
    workers: Annotated[int, typer.Option(help="DataLoader workers per process.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of sampling order, augmentation and init.")] = 0,
    deterministic: Annotated[bool, typer.Option(help="Deterministic kernels (slower).")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    dataset: Annotated[str, typer.Option(help="auto | coco | mpii.")] = "auto",
    ann_file: Annotated[PathOpt, typer.Option(help="Training annotation file (overrides --data-root).")] = None,
    image_dir: Annotated[PathOpt, typer.Option(help="Training image folder (overrides --data-root).")] = None,
    val_ann_file: Annotated[PathOpt, typer.Option(help="COCO validation json: AP each --val-every epochs.")] = None,
    val_image_dir: Annotated[PathOpt, typer.Option(help="Validation image folder.")] = None,
    val_every: Annotated[int, typer.Option(help="Validate every N epochs.")] = 1,
    val_flip: Annotated[bool, typer.Option(help="Flip test in validation (official: on).")] = True,
    hrnet_pretrained: Annotated[PathOpt, typer.Option(help="ImageNet HRNet-W32/W48 weights (B/L).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Also write last.pth every N steps (0: per epoch).")] = 0,
    augment: Annotated[bool, typer.Option(help="Official training augmentation.")] = True,
    on_bad: OnBadOpt = "raise",
    max_images: Annotated[int | None, typer.Option(help="Train on the first N persons only.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps in all.")] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Train a TokenPose variant; checkpoints, metrics.jsonl and config.json go to --out."""
    from tokenpose.training.config import TrainConfig
    from tokenpose.training.trainer import train

    if resume and resume_from is not None:
        raise ValueError("give either --resume or --resume-from, not both")
    cfg = TrainConfig(
        variant=variant, data_root=data_root, dataset=dataset, ann_file=ann_file, image_dir=image_dir, out=out,
        epochs=epochs, batch_size=batch_size, lr=lr, milestones=_milestones(milestones), gamma=gamma, amp=amp,
        grad_clip=grad_clip, workers=workers, seed=seed, deterministic=deterministic, device=device,
        resume=resume_from if resume_from is not None else (True if resume else None),
        hrnet_pretrained=hrnet_pretrained, checkpoint_every_steps=checkpoint_every, augment=augment,
        on_bad=on_bad, max_images=max_images, max_steps=max_steps, val_ann_file=val_ann_file,
        val_image_dir=val_image_dir, val_every=val_every, val_flip_test=val_flip, progress=progress,
    )
    with warnings_as_lines():  # e.g. what --on-bad skip dropped, settings a resume changes
        result = train(cfg)
    if result.final_checkpoint is not None:
        typer.echo(f"{result.steps} steps, {result.epochs} epochs; weights: {result.final_checkpoint}")


main = standalone(command)
