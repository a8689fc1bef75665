"""What every CLI module shares: option aliases and turning known errors into one line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from tokenpose.errors import TokenPoseError

F = TypeVar("F", bound=Callable)

VariantOpt = Annotated[str, typer.Option("--variant", "-v", help="Model variant (see `tokenpose zoo`).")]
CheckpointOpt = Annotated[
    Path | None, typer.Option("--checkpoint", "-c", help="Official-layout .pth checkpoint.")
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str) -> typer.Exit:
    """Print `message` as one line on stderr; return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def friendly_errors(func: F) -> F:
    """Known errors (ours, bad values, missing files) become one line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (TokenPoseError, ValueError, FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def standalone(command: Callable) -> Callable[[], None]:
    """A console-script entry point (e.g. `tokenpose-export`) running one command on its own."""

    def main() -> None:
        app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        app.command()(command)
        app()

    return main
