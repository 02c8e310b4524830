"""Generate the CLI reference (docs/cli.md) from the commands' own --help texts.

Regenerate with ``python -m vfl_cli.cli._reference > docs/cli.md``; a test fails when the
committed file drifts from the code.
"""

from __future__ import annotations

import click

from vfl_cli.cli import cli


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    out = [(path, command)]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            sub = command.commands[name]
            if not sub.hidden:
                out += _walk(sub, [*path, name])
    return out


def render() -> str:
    lines = [
        "# CLI reference",
        "",
        "Generated from `--help` by `python -m vfl_cli.cli._reference > docs/cli.md`; do not edit.",
        "",
    ]
    for path, command in _walk(cli, ["vfl"]):
        ctx = click.Context(command, info_name=" ".join(path), terminal_width=100, max_content_width=100,
                            help_option_names=["-h", "--help"])
        lines += [f"## {' '.join(path)}", "", "```", command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    click.echo(render(), nl=False)
