"""Every command is documented with an example, and docs/cli.md matches --help."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from vfl_cli.cli import cli
from vfl_cli.cli._reference import _walk, render

DOCS = Path(__file__).resolve().parents[1] / "docs"
COMMANDS = [(" ".join(p), c) for p, c in _walk(cli, ["vfl"])]


@pytest.mark.parametrize("name, command", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_has_help_with_an_example(name: str, command: click.Command) -> None:
    assert command.help and "Example" in command.help, f"{name} lacks an Example in its --help"


def test_cli_reference_is_current() -> None:
    committed = (DOCS / "cli.md").read_text()
    assert committed == render(), (
        "docs/cli.md is out of date: run 'python -m vfl_cli.cli._reference > docs/cli.md'"
    )
