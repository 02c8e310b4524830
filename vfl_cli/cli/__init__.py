"""The ``vfl`` command: thin click commands over the library, one error boundary."""

from __future__ import annotations

import sys
from typing import Any

import click

from vfl_cli import __version__
from vfl_cli.cli._console import printable, set_quiet
from vfl_cli.errors import VflError


class VflGroup(click.Group):
    """The one error boundary: a VflError becomes one ``Error:`` line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            scheduler = ctx.params.get("dask_scheduler")
            if scheduler:
                from vfl_cli.crypto.parallel import use_dask

                with use_dask(scheduler):
                    return super().invoke(ctx)
            return super().invoke(ctx)
        except VflError as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: {printable(exc)}", err=True)  # one line, whatever a file said
            sys.exit(1)


@click.group(cls=VflGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-w",
    "--workspace",
    envvar="VFL_WORKSPACE",
    type=click.Path(file_okay=False),
    help="Party workspace to use (default: found by walking up from the current folder).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print no status lines or progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks for user errors too.")
@click.option("--dask-scheduler", envvar="VFL_DASK_SCHEDULER", metavar="ADDRESS",
              help="Run the Paillier engine's and the alignment's hashing and blinding on this Dask "
              "cluster (tcp://host:8786); needs "
              "the vfl_cli[dask] extra on every worker. Use only a cluster this party controls.")
@click.version_option(__version__, prog_name="vfl")
def cli(workspace: str | None, quiet: bool, debug: bool, dask_scheduler: str | None) -> None:
    """vfl: vertical federated learning where everything between parties is a signed file.

    Each party keeps a workspace; every command reads files and writes files; artifacts are
    carried between parties by hand (SFTP, USB, email) and every one is logged in a signed
    ledger.

    Example (each party, once):

    \b
        vfl init bank --role active --data bank.csv --id-column id --label-column default
        cd bank && vfl keygen && vfl keys export --out bank.card
        vfl keys import ../bureau.card
    """
    set_quiet(quiet)


def _register() -> None:
    from vfl_cli.cli import (
        align,
        audit,
        binning,
        hfl,
        inspect,
        jobs,
        keys,
        recipe,
        report,
        stats,
        status,
        train,
        watch,
        workspace,
    )

    for module in (workspace, keys, jobs, align, train, hfl, inspect, audit, recipe, report,
                   watch, status, stats, binning):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()
