"""Exceptions the library raises for problems a user can fix; the CLI prints them as one line."""

from __future__ import annotations


class TokenPoseError(Exception):
    """Base class: a known problem with the user's input, files or environment."""


class CheckpointError(TokenPoseError):
    """A checkpoint file cannot be read or does not fit the model."""


class InputShapeError(TokenPoseError, ValueError):
    """A tensor given to the model or an engine has the wrong shape."""
