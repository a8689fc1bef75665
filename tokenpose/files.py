"""Atomic file writes: a temp file in the same folder, fsync, then rename over the final name.

An interrupted write leaves the previous file (or nothing) under the final name, never half a file.
`check_writable` / `ensure_writable_dir` prove an output can be written before long work starts.
`remove_stale_temp_files` clears the temp files a killed run left behind. `user_cache_dir` is where
the package keeps what it can remake (bench artifacts, chunk-size tables, the compiled attention kernel).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tokenpose.errors import TokenPoseError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which would race with threads.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file owner-only; give it the permissions a plain open() would.
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class NotWritableError(TokenPoseError):
    """An output folder or file cannot be created; the message names the path."""


def _probe(folder: Path) -> None:
    """Create and remove a temp file in `folder`: that catches what permission bits alone do not
    tell (a read-only mount, ACLs, an exhausted quota). OSError when it cannot."""
    fd, probe = tempfile.mkstemp(prefix=".tokenpose-write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create folder `path` (and its parents) if needed and prove a file can be created in it;
    NotWritableError naming the folder otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotWritableError(f"output folder {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        _probe(path)
    except OSError as exc:
        raise NotWritableError(f"output folder {path} is not writable: {exc.strerror or exc}") from None
    return path


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Prove, creating nothing, that an output file (or with `folder`, an output folder) can be
    made at `path` later, e.g. by `atomic_write`: call it before long work that ends in a write.

    The nearest existing folder on the way to `path` must be writable. NotWritableError names
    `path` and the reason: a file where a folder is needed, or the folder that refuses writes.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        what = "a folder" if folder else "a file"
        raise NotWritableError(f"cannot write {path}: it exists and is not {what}")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotWritableError(f"cannot write {path}: {existing} is not a folder")
    try:
        _probe(existing)
    except OSError as exc:
        raise NotWritableError(f"cannot write {path}: {existing} is not writable: {exc.strerror or exc}") from None
    return path


STALE_TEMP_PATTERNS: tuple[str, ...] = (".*.tmp",)


def remove_stale_temp_files(folder: str | os.PathLike, patterns: tuple[str, ...] = STALE_TEMP_PATTERNS) -> list[Path]:
    """Delete what a killed run left in `folder`: the hidden `.NAME.*.tmp` files (and temp
    folders) of `atomic_write` and friends, or whatever else `patterns` (globs) name.

    Call it once at the start of a run that owns `folder`: a temp file of a run still writing
    there would go too. Returns the paths removed; ones that vanish meanwhile are not an error.
    """
    folder = Path(folder)
    removed = []
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/tokenpose`, default `~/.cache/tokenpose` (not created here)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenpose"
