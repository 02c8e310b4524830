"""Options shared by several commands (never copy-pasted)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from vfl_cli.workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON result on stdout.")
force_option = click.option("--force", is_flag=True, help="Overwrite an existing output file.")


def out_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help=help_text
    )


def workspace(ctx: click.Context) -> Workspace:
    """The workspace named by -w or found by walking up from the current folder."""
    explicit = ctx.find_root().params.get("workspace")
    return Workspace.find(Path(explicit) if explicit else None)
