"""``vfl keys``: export this party's public card, trust peers, show fingerprints."""

from __future__ import annotations

from pathlib import Path

import click

from vfl_cli.artifacts.io import ensure_writable, replace_atomic, write_new
from vfl_cli.cli._console import emit_json, print_result, say
from vfl_cli.cli._options import force_option, json_option, out_option, workspace
from vfl_cli.crypto.signing import short


@click.group()
def keys() -> None:
    """Export this party's public card, import peers' cards, show fingerprints.

    Example:

    \b
        vfl keys export --out bank.card && vfl keys import bureau.card
    """


@keys.command()
@out_option("Where to write the public party card.")
@force_option
@click.pass_context
def export(ctx: click.Context, out: Path, force: bool) -> None:
    """Write the public party card: name, role, Paillier public key, signing key, fingerprints.

    The card holds no private key; send it to every peer.

    Example:

    \b
        vfl keys export --out bank.card
    """
    ws = workspace(ctx)
    ensure_writable(out, force=force)
    data = ws.card().to_bytes(ws.signer)
    (replace_atomic if force else write_new)(out, data)
    say(f"Wrote {out}; send it to your peers and read them this fingerprint to compare:")
    say(f"  {ws.name}: {short(ws.card().signing_fingerprint)}")


@keys.command(name="import")
@click.argument("card", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def import_(ctx: click.Context, card: Path, as_json: bool) -> None:
    """Trust a peer's party card (check its fingerprint with the peer out of band).

    Example:

    \b
        vfl keys import bureau.card
    """
    ws = workspace(ctx)
    c, new = ws.import_card(card.read_bytes(), what=str(card))
    if as_json:
        emit_json({"name": c.name, "role": c.role, "new": new,
                   "signing_fingerprint": c.signing_fingerprint,
                   "paillier_fingerprint": c.paillier_fingerprint})
    verb = "Now trusting" if new else "Already trusted"
    say(f"{verb} {c.role} party '{c.name}', signing key {short(c.signing_fingerprint)}")
    say("Compare this fingerprint with the peer by phone or in person before any job.")


@keys.command()
@json_option
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Show this party's and its trusted peers' key fingerprints.

    Example:

    \b
        vfl keys show --json
    """
    from rich.table import Table

    ws = workspace(ctx)
    cards = [ws.card(), *ws.peers().values()]
    rows = [{"name": c.name, "role": c.role, "self": c.name == ws.name,
             "paillier_bits": c.paillier.bits,
             "paillier_fingerprint": c.paillier_fingerprint,
             "signing_fingerprint": c.signing_fingerprint} for c in cards]
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"Keys known to {ws.name}")
    for col in ("party", "role", "Paillier", "Paillier key", "signing key"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"] + (" (this party)" if r["self"] else ""), r["role"],
                      f"{r['paillier_bits']} bits", short(r["paillier_fingerprint"]),
                      short(r["signing_fingerprint"]))
    print_result(table)


COMMANDS = [keys]
