"""``vfl inspect``: what is in an artifact, without any private key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vfl_cli.artifacts.container import MEMBER_TYPES, read_artifact
from vfl_cli.cli._console import console, emit_json
from vfl_cli.cli._options import json_option
from vfl_cli.errors import VflError
from vfl_cli.workspace import Workspace


def _signature_status(loaded: Any, ws_dir: str | None) -> str:
    try:
        ws = Workspace.find(Path(ws_dir) if ws_dir else None)
        loaded.verify(ws.verifier_for(loaded.artifact.sender), what="artifact")
    except VflError as exc:
        return f"not verified: {exc}"
    return f"valid ({loaded.artifact.sender}'s key trusted by {ws.name})"


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def inspect(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Show an artifact: kind, job, sender, recipient, members, what is encrypted.

    Needs no private key. Inside a workspace it also checks the sender's signature.

    Example:

    \b
        vfl inspect outbox/psi-20261122-3f2a9c.001.job-proposal.bank-to-bureau.zip
    """
    loaded = read_artifact(file)
    manifest = loaded.artifact.manifest()
    manifest["sender_key"] = loaded.artifact.sender_key
    out = {
        "file": str(file),
        "sha256": loaded.sha256,
        "size": loaded.size,
        "signature": _signature_status(loaded, ctx.find_root().params.get("workspace")),
        "manifest": manifest,
    }
    if as_json:
        emit_json(out)
        return
    from rich.table import Table

    a = loaded.artifact
    console.print(f"[bold]{file.name}[/bold]  ({loaded.size:,} bytes, sha256 {loaded.sha256[:16]}…)")
    console.print(f"kind {a.kind}  job {a.job}  step {a.seq} ({a.step})  round {a.round}")
    console.print(f"from {a.sender} to {a.recipient}, created {a.created}")
    console.print(f"signature: {out['signature']}", markup=False)
    if a.meta:
        console.print("meta:", markup=False)
        console.print_json(data=dict(a.meta))
    table = Table(title="payload members")
    for col in ("member", "content", "shape / count", "key", "bytes"):
        table.add_column(col)
    for name, desc in manifest["members"].items():
        shape = desc.get("shape", desc.get("count", ""))
        table.add_row(name, MEMBER_TYPES[desc["type"]], str(shape),
                      str(desc.get("key_id", ""))[:16], f"{desc['size']:,}")
    console.print(table)


COMMANDS = [inspect]
