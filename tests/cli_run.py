"""Run the real `tokenpose` CLI in a subprocess, for the failure-matrix tests (tests/test_failures_*.py).

Each case asserts the exit code, that stderr is exactly one line with no traceback, and what is on
disk afterwards. A subprocess (not CliRunner) is the user's view: the real entry point, real stdio,
real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
COCO_MINI = FIXTURES / "coco_mini"
COCO_ANN = COCO_MINI / "annotations" / "person_keypoints_mini.json"
COCO_IMAGES = COCO_MINI / "images"


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """stderr lines, without progress-bar and warning noise that libraries print."""
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"  # rich wraps long messages at the terminal width; keep one line one line
    env.update(extra)
    return env


def sigint_as_usual() -> None:
    """`preexec_fn` for a child a test stops with SIGINT. A shell without job control starts its
    background jobs with SIGINT ignored (POSIX) and children inherit that: a suite run that way
    (`make test &` in a script) would see the CLI shrug the signal off. The child gets the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str | os.PathLike, cwd: Path | None = None, timeout: float = 300, **env: str) -> CliResult:
    """`python -m tokenpose.cli.main ARGS`: exit code, stdout and stderr as text."""
    proc = subprocess.run(
        [sys.executable, "-m", "tokenpose.cli.main", *map(str, args)],
        cwd=cwd or ROOT, env=cli_env(**env), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: CliResult, *needles: str, rc: int = 1, allow_notes: bool = False) -> str:
    """The command failed with exit code `rc`, and stderr is one `error:` line that names every
    needle (a file, a key, a shape) and holds no traceback. Returns that line. With `allow_notes`,
    `warning:`/`note:` lines printed before the error (e.g. about the input) are allowed."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.error_lines
    if allow_notes:
        lines = [ln for ln in lines if not ln.startswith(("warning:", "note:"))]
    assert result.rc == rc, f"exit code {result.rc}, want {rc}; stderr:\n{result.stderr}"
    assert len(lines) == 1, f"want one stderr line, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error:"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line
