"""``vfl audit``: the signed, hash-chained ledger of everything sent and received."""

from __future__ import annotations

import click

from vfl_cli.audit import verify_workspace
from vfl_cli.cli._console import console, emit_json, say
from vfl_cli.cli._options import json_option, workspace
from vfl_cli.errors import VflError


@click.group()
def audit() -> None:
    """List and re-check the ledger of every artifact sent and received.

    Example:

    \b
        vfl audit verify
    """


@audit.command()
@json_option
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """List the ledger entries.

    Example:

    \b
        vfl audit show --json
    """
    from rich.table import Table

    ws = workspace(ctx)
    entries = ws.ledger.entries()
    if as_json:
        emit_json(entries)
        return
    table = Table(title=f"Ledger of {ws.name}")
    for col in ("#", "time", "event", "job", "kind", "from", "to", "file"):
        table.add_column(col)
    for e in entries:
        table.add_row(str(e["seq"]), e["time"], e["event"], e.get("job", ""), e.get("kind", ""),
                      e.get("sender", ""), e.get("recipient", ""), e.get("file", ""))
    console.print(table)


@audit.command()
@json_option
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Re-check the ledger's hash chain and signatures and every archived file still present.

    Exits 1 if anything does not check out.

    Example:

    \b
        vfl audit verify --json
    """
    ws = workspace(ctx)
    rep = verify_workspace(ws)
    if as_json:
        emit_json(rep.to_dict())
    if not rep.ok:
        raise VflError(
            f"audit failed with {len(rep.problems)} problem(s); first: {rep.problems[0]}"
        )
    say(f"Ledger OK: {rep.entries} entries, {rep.files_checked} files re-checked, "
        f"{len(rep.files_missing)} no longer present")


COMMANDS = [audit]
