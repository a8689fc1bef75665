"""Kill a training process with SIGKILL mid-run, check its files, resume it, and compare with an
uninterrupted run: same step counter, same metrics rows, bitwise-equal weights."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import COCO_MINI

from tokenpose import create_model
from tokenpose.errors import CheckpointError, TokenPoseError
from tokenpose.models.checkpoints import read_checkpoint
from tokenpose.models.config import VARIANTS
from tokenpose.training.config import TrainConfig
from tokenpose.training.checkpointing import model_config_from_checkpoint, read_metrics
from tokenpose.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent

TINY = dataclasses.replace(VARIANTS["t"], name="t-tiny", input_hw=(64, 48), heatmap_hw=(16, 12),
                           patch_hw=(8, 6), depth=1, heads=4, dim=64, mlp_hidden=128, head_hidden=32)
STEPS_PER_EPOCH = 4


def make_config(out: str | Path, max_steps: int | None = None, resume: bool = False) -> TrainConfig:
    """A tiny T (no BatchNorm), 16 persons, batch 4: 4 steps per epoch, last.pth after every step,
    the learning rate drops after epoch 2 (so the scheduler state matters), workers=1 so a
    DataLoader worker is killed as well."""
    return TrainConfig(variant=TINY, data_root=COCO_MINI, out=out, epochs=50, batch_size=4, max_images=16,
                       milestones=(2,), workers=1, seed=7, deterministic=True, checkpoint_every_steps=1,
                       max_steps=max_steps, resume=resume, device="cpu", progress=False)


# The run to kill: this module's config in a child process with one torch thread.
SCRIPT = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_resume import make_config
from tokenpose.training.trainer import train
train(make_config(sys.argv[1]))
"""


@pytest.fixture
def like_the_child():
    """In-process runs computed like the child's (one thread, deterministic kernels), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)


def start(script: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(script), str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def saved_step(path: Path) -> int | None:
    try:
        return read_checkpoint(path)["step"]
    except CheckpointError:
        return None


def test_sigkill_then_resume_continues_exactly(tmp_path, like_the_child):
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    killed = tmp_path / "killed"

    proc = start(script, killed)
    deadline = time.monotonic() + 90
    step = None
    while time.monotonic() < deadline and proc.poll() is None:
        step = saved_step(killed / "last.pth") if (killed / "last.pth").exists() else None
        if step is not None and step >= STEPS_PER_EPOCH + 2:  # mid-epoch 1, after epoch 0's metrics row
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail(f"training ended before it could be killed:\n{proc.communicate()[0]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # Every file under a final name is complete; temp files of an interrupted write are hidden.
    killed_step = read_checkpoint(killed / "last.pth")["step"]
    assert killed_step >= step
    for path in killed.glob("*.pth"):
        ckpt = read_checkpoint(path)
        create_model(model_config_from_checkpoint(ckpt), checkpoint=path)
    assert {p.name for p in killed.iterdir() if not p.name.startswith(".")} <= {"config.json", "last.pth", "metrics.jsonl"}
    rows_before = read_metrics(killed / "metrics.jsonl")
    done = killed_step // STEPS_PER_EPOCH
    # A kill between an epoch's metrics row and its checkpoint leaves one row ahead; resume drops it.
    assert [r["epoch"] for r in rows_before] in (list(range(done)), list(range(done + 1)))

    # Resume to a few steps past the next epoch boundary; an uninterrupted run stops at the same step.
    target = (killed_step // STEPS_PER_EPOCH + 1) * STEPS_PER_EPOCH + 2
    result = train(make_config(killed, max_steps=target, resume=True))
    assert (result.resumed_from_step, result.steps) == (killed_step, target)
    train(make_config(tmp_path / "reference", max_steps=target))

    got, want = read_checkpoint(killed / "last.pth"), read_checkpoint(tmp_path / "reference" / "last.pth")
    assert got["step"] == want["step"] == target
    assert got["epoch"] == want["epoch"] and got["train_state"]["epoch_samples"] == want["train_state"]["epoch_samples"]
    for k, v in want["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v), k
    assert got["scheduler"]["last_epoch"] == want["scheduler"]["last_epoch"]
    assert got["optimizer"]["param_groups"][0]["lr"] == want["optimizer"]["param_groups"][0]["lr"]

    rows, ref_rows = read_metrics(killed / "metrics.jsonl"), read_metrics(tmp_path / "reference" / "metrics.jsonl")
    assert [(r["epoch"], r["step"], r["images"]) for r in rows] == [(r["epoch"], r["step"], r["images"]) for r in ref_rows]
    assert [(r["epoch"], r["step"]) for r in rows] == [(e, (e + 1) * STEPS_PER_EPOCH) for e in range(len(rows))]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], rel=1e-6)
    assert not list(killed.glob(".*.tmp"))  # leftovers of the kill were cleaned on resume


def test_resume_after_a_cut_metrics_line_and_leftover_temp_files(tmp_path, like_the_child):
    """A kill during the metrics append leaves half a row; one during an atomic write, a temp file."""
    out = tmp_path / "run"
    cfg = {"variant": TINY, "data_root": COCO_MINI, "out": out, "epochs": 2, "batch_size": 4, "max_images": 8,
           "workers": 0, "seed": 1, "device": "cpu", "progress": False}
    train(TrainConfig(**cfg, max_steps=3))  # epoch 0 (2 steps) done, last.pth in the middle of epoch 1
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "step": 4, "lo')
    leftovers = [out / ".config.json.x1y2.tmp", out / ".metrics.jsonl.a9b8.tmp", out / ".best.pth.c7d6.tmp"]
    for p in leftovers:
        p.write_bytes(b"partial")
    with pytest.warns(UserWarning, match="skipping the last line"):
        assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [0]

    with pytest.warns(UserWarning, match="skipping the last line"):
        result = train(TrainConfig(**cfg, resume=True))
    assert (result.resumed_from_step, result.steps) == (3, 4)
    rows = read_metrics(out / "metrics.jsonl")  # rewritten without the cut line: no warning now
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 2), (1, 4)]
    assert not list(out.glob(".*.tmp"))

    (out / "metrics.jsonl").write_text('{"epoch": 0}\n{"epo\n{"epoch": 1}\n')  # damage before the end
    with pytest.raises(TokenPoseError, match="line 2 is not json"):
        read_metrics(out / "metrics.jsonl")
