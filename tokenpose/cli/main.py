"""The root `tokenpose` command; each sub-command lives in its own module under tokenpose.cli."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="tokenpose",
    help="TokenPose human-pose estimation: model zoo, training, evaluation, export, engines, benchmarks.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def root() -> None:
    """TokenPose human-pose estimation: model zoo, training, evaluation, export, engines, benchmarks."""


# sub-command -> module holding a `command` function. Registered in this order in --help.
COMMANDS = {
    "zoo": "tokenpose.cli.zoo",
    "train": "tokenpose.cli.train",
    "eval": "tokenpose.cli.eval",
    "validate": "tokenpose.cli.validate",
    "export": "tokenpose.cli.export",
    "bench": "tokenpose.cli.bench",
    "predict": "tokenpose.cli.predict",
    "explain": "tokenpose.cli.explain",
    "serve": "tokenpose.cli.serve",
}

# Every command module imports only typer, rich and cli.common at module level (the library
# inside the command), so registering them all keeps `tokenpose --help` free of torch and cv2.
for _name, _module in COMMANDS.items():
    _mod = importlib.import_module(_module)
    app.command(_name, help=_mod.command.__doc__)(_mod.command)


if __name__ == "__main__":
    app()
