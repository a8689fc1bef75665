"""Failure matrix of `tokenpose bench` and `tokenpose explain` outputs, through the real CLI.

An output that cannot be written is found before the long work starts: exit code 1, one stderr
line naming the path, and nothing written (no result file, no temp file, no exported model, no
created folder). Tests run as root here, where `chmod 0o555` does not stop writes: the blocked
location is then a path below a regular file, which no user can create.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli_run import COCO_IMAGES, assert_one_line_error, run_cli

IMAGE = COCO_IMAGES / "000000000785.jpg"
# The quickest bench that would otherwise run and write: seeded random weights, one timed call.
QUICK_BENCH = ("bench", "--variant", "t", "--engines", "torch", "--device", "cpu", "--batch", "1",
               "--warmup", "0", "--iters", "1", "--peak-size", "64", "--settle-ms", "0", "--quiet")


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its content (None for folders): what is on disk."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def blocked(tmp_path) -> Iterator[Path]:
    """A folder no output can be created in: read-only for a normal user, a regular file for root."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    plain = tmp_path / "plain.txt"
    plain.write_text("a regular file, not a folder\n")
    yield plain


@pytest.fixture
def junk_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint that cannot be loaded: an error naming --out instead of it shows that the
    output was checked before the model was built."""
    path = tmp_path_factory.mktemp("ckpt") / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    return path


@pytest.mark.parametrize("option", ["--json", "--markdown", "--plot"])
def test_bench_output_in_blocked_folder(tmp_path, blocked, option):
    target = blocked / "sub" / "bench.out"
    work = tmp_path / "work"
    before = _tree(tmp_path)
    result = run_cli(*QUICK_BENCH, "--work-dir", work, option, target)
    assert_one_line_error(result, str(target), str(blocked))
    # Checked before the run: no weights were made in the work dir, nothing else changed.
    assert not work.exists()
    assert _tree(tmp_path) == before


def test_bench_output_that_is_a_folder(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    result = run_cli(*QUICK_BENCH, "--work-dir", tmp_path / "work", "--json", folder)
    assert_one_line_error(result, str(folder), "is not a file")
    assert not (tmp_path / "work").exists() and list(folder.iterdir()) == []


def test_bench_work_dir_that_is_a_file(tmp_path):
    work = tmp_path / "work"
    work.write_text("not a folder\n")
    out = tmp_path / "bench.json"
    result = run_cli(*QUICK_BENCH, "--work-dir", work, "--json", out)
    assert_one_line_error(result, str(work / "t"), "not writable")
    assert not out.exists() and work.read_text() == "not a folder\n"


@pytest.mark.parametrize(("option", "name"), [("--pipeline-data", "missing.json"), ("--calib-data", "missing_dir")])
def test_bench_missing_input_data(tmp_path, option, name):
    extra = ("--pipeline",) if option == "--pipeline-data" else ()
    result = run_cli(*QUICK_BENCH, *extra, "--work-dir", tmp_path / "work", option, tmp_path / name)
    assert_one_line_error(result, option, name, "not found")
    assert list(tmp_path.iterdir()) == []


def test_explain_out_in_blocked_folder(tmp_path, blocked, junk_checkpoint):
    out = blocked / "explain"
    before = _tree(tmp_path)
    result = run_cli("explain", IMAGE, "-c", junk_checkpoint, "-v", "t", "--out", out)
    assert_one_line_error(result, str(out), str(blocked))
    assert _tree(tmp_path) == before


def test_explain_out_that_is_a_file(tmp_path, junk_checkpoint):
    out = tmp_path / "explain.png"
    out.write_bytes(b"keep me")
    result = run_cli("explain", IMAGE, "-c", junk_checkpoint, "-v", "t", "--out", out)
    assert_one_line_error(result, str(out), "is not a folder")
    assert out.read_bytes() == b"keep me" and [p.name for p in tmp_path.iterdir()] == ["explain.png"]
