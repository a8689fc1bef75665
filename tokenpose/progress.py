"""The one rich progress-bar factory: the CLI commands and the training loop both draw with it."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_progress(
    *extra: ProgressColumn, console: Console | None = None, enabled: bool = True
) -> contextlib.AbstractContextManager[Progress | None]:
    """A transient `Progress` (description, bar, done/total, `extra` columns, elapsed, remaining)
    on `console` (default: stderr), or a context that yields None when not `enabled`."""
    if not enabled:
        return contextlib.nullcontext()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
               TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console or Console(stderr=True), transient=True)
