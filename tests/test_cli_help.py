"""`tokenpose --help` stays light and every command is registered (issue 11).

Subprocesses, so that what the test itself imported (torch, cv2) does not hide what the CLI imports.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_run import ROOT, cli_env, run_cli

from tokenpose.cli.main import COMMANDS

HEAVY = ("torch", "cv2", "matplotlib", "onnxruntime", "tensorrt", "ray")

PROBE = """
import runpy, sys
sys.argv = ["tokenpose", "--help"]
try:
    runpy.run_module("tokenpose.cli.main", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
"""


def _heavy_after(code: str) -> tuple[str, str]:
    """(stdout before the last line, the heavy modules loaded) of `code` + the probe's last line."""
    proc = subprocess.run([sys.executable, "-c", code + f"\nimport sys\nprint('HEAVY:' + ','.join(sorted(m for m in "
                           f"{HEAVY!r} if m in sys.modules)))"], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out, _, last = proc.stdout.rpartition("HEAVY:")
    return out, last.strip()


def test_help_imports_no_heavy_library():
    out, loaded = _heavy_after(PROBE)
    for name in COMMANDS:
        assert name in out
    if loaded:
        culprits = {module: _heavy_after(f"import {module}")[1] for module in COMMANDS.values()}
        pytest.fail(f"`tokenpose --help` imported {loaded}; at module level: "
                    + ", ".join(f"{m} ({h})" for m, h in culprits.items() if h))


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help(name):
    res = run_cli(name, "--help", timeout=120)
    assert res.rc == 0, res.stderr
    assert "Usage:" in res.stdout and "--help" in res.stdout
