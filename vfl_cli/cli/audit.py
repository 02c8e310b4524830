"""``vfl audit``: the signed, hash-chained ledger of everything sent and received."""

from __future__ import annotations

from pathlib import Path

import click

from vfl_cli.artifacts.io import ensure_writable, replace_atomic, write_new
from vfl_cli.audit import export_ledger, verify_workspace
from vfl_cli.audit import reconcile as reconcile_export
from vfl_cli.cli._console import emit_json, print_result, safe, say
from vfl_cli.cli._options import force_option, json_option, out_option, workspace
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
        table.add_row(*(safe(v) for v in (e["seq"], e["time"], e["event"], e.get("job", ""), e.get("kind", ""),
                                          e.get("sender", ""), e.get("recipient", ""), e.get("file", ""))))
    print_result(table)


@audit.command()
@json_option
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Re-check the ledger, its signed checkpoint and the archive against each other.

    Finds edited, reordered, truncated, rolled-back and deleted ledgers and changed archive
    files; a half-written last line (power loss) is a warning. Exits 1 on any problem.

    Example:

    \b
        vfl audit verify --json
    """
    ws = workspace(ctx)
    rep = verify_workspace(ws)
    if as_json:
        emit_json(rep.to_dict())
    for w in rep.warnings:
        say(f"Warning: {w}")
    if not rep.ok:
        raise VflError(
            f"audit failed with {len(rep.problems)} problem(s); first: {rep.problems[0]}"
        )
    say(f"Ledger OK: {rep.entries} entries, {rep.files_checked} files re-checked, "
        f"{len(rep.files_missing)} no longer present")


@audit.command()
@out_option("Where to write the signed export of this party's ledger.")
@force_option
@click.pass_context
def export(ctx: click.Context, out: Path, force: bool) -> None:
    """Write this party's whole ledger, signed, for a peer to reconcile against its own.

    Example:

    \b
        vfl audit export --out bank.ledger.json
    """
    ws = workspace(ctx)
    ensure_writable(out, force=force)
    data = export_ledger(ws)
    (replace_atomic if force else write_new)(out, data)
    say(f"Wrote {out} ({len(ws.ledger.entries())} entries); send it to the peer, who runs "
        f"'vfl audit reconcile {out.name}'")


@audit.command()
@click.argument("peer_export", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def reconcile(ctx: click.Context, peer_export: Path, as_json: bool) -> None:
    """Check a peer's signed ledger export against this party's ledger, file by file.

    Every file one party logged as sent must be logged by the other as received with the same
    SHA-256, and the ledger heads each party signed into its artifacts must still be in its
    ledger. Exits 1 on any mismatch; files still in transit are warnings.

    Example:

    \b
        vfl audit reconcile bureau.ledger.json
    """
    ws = workspace(ctx)
    rep = reconcile_export(ws, peer_export)
    if as_json:
        emit_json(rep.to_dict())
    for w in rep.warnings:
        say(f"Warning: {w}")
    if not rep.ok:
        raise VflError(f"reconcile with {rep.peer} found {len(rep.problems)} problem(s); "
                       f"first: {rep.problems[0]}")
    say(f"Ledgers agree: {rep.files_matched} file(s) exchanged with {rep.peer} match on both sides")


COMMANDS = [audit]
