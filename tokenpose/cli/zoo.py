"""`tokenpose zoo`: the variant table with parameters and FLOPs beside the paper's figures."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from tokenpose.cli.common import JsonFlag, friendly_errors, print_wide, standalone


@friendly_errors
def command(
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Only these variants.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Print every variant's input size, parameters and GFLOPs beside the paper's figures."""
    from tokenpose.models.complexity import zoo_table
    from tokenpose.models.config import get_config
    from tokenpose.models.zoo import render_zoo

    names = [get_config(v).name for v in variant] if variant else None
    rows = zoo_table(names)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        print_wide(render_zoo(rows), min_width=100)


main = standalone(command)
