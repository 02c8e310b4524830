"""``vfl keys``: export this party's public card, trust peers, show fingerprints, rotate keys,
remove peers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vfl_cli.artifacts.io import ensure_writable, replace_atomic, write_new
from vfl_cli.cli._console import emit_json, print_result, say
from vfl_cli.cli._options import force_option, json_option, out_option, workspace
from vfl_cli.crypto.signing import short
from vfl_cli.workspace import SECURE_KEY_BITS, Workspace


@click.group()
def keys() -> None:
    """Export this party's public card, import peers' cards and notices, show fingerprints,
    rotate this party's keys, remove a peer.

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
    """Trust a peer's party card (check its fingerprint with the peer out of band), or apply a
    peer's notice: a key rotation (accepted only when signed by the key this party trusts for
    that peer) or the peer's removal of this party (the peer is removed here in turn).

    Example:

    \b
        vfl keys import bureau.card
        vfl keys import bureau.rotation
    """
    from vfl_cli import keyring

    ws = workspace(ctx)
    data = card.read_bytes()
    kind = keyring.notice_format(data)
    if kind == keyring.REMOVAL_FORMAT:
        _import_removal(ws, data, str(card), as_json)
        return
    if kind == keyring.ROTATION_FORMAT:
        c, new = keyring.import_rotation(ws, data, what=str(card))
    else:
        c, new = ws.import_card(data, what=str(card))
    if as_json:
        emit_json({"name": c.name, "role": c.role, "new": new,
                   "signing_fingerprint": c.signing_fingerprint,
                   "paillier_fingerprint": c.paillier_fingerprint})
    verb = "Now trusting" if new else "Already trusted"
    say(f"{verb} {c.role} party '{c.name}', signing key {short(c.signing_fingerprint)}")
    if kind == keyring.ROTATION_FORMAT:
        say("The rotation notice was signed by the key you trusted before; the old card is kept in peers/retired/.")
    else:
        say("Compare this fingerprint with the peer by phone or in person before any job.")


def _import_removal(ws: Workspace, data: bytes, what: str, as_json: bool) -> None:
    from vfl_cli import keyring

    c, running = keyring.import_removal(ws, data, what=what)
    if as_json:
        emit_json({"name": c.name, "removed": True, "unfinished_jobs": running})
    say(f"{c.name} removed {ws.name} from its peers; {c.name} is removed here too (card in peers/removed/)")
    if running:
        say(f"Unfinished jobs with {c.name}: {', '.join(running)}; end them with 'vfl job cancel JOB'")


@keys.command()
@click.option("--key-bits", type=int, default=None, help="Paillier modulus size (default: the current key's).")
@click.option("--insecure-test-keys", is_flag=True, hidden=True, help="Allow keys below 1024 bits (tests only).")
@out_option("Where to write the signed rotation notice for the peers.")
@force_option
@json_option
@click.pass_context
def rotate(ctx: click.Context, key_bits: int | None, insecure_test_keys: bool, out: Path, force: bool,
           as_json: bool) -> None:
    """Replace this party's Paillier and signing keys, and write a rotation notice for the peers.

    The notice carries the new card and is signed by the old signing key; each peer imports it
    with 'vfl keys import NOTICE'. The old keys are kept (keys/retired/, 0600) so that the
    ledger and archived files still verify ('vfl audit verify'). Refused while a job is running.

    Example:

    \b
        vfl keys rotate --out bank.rotation
    """
    from vfl_cli import keyring

    ws = workspace(ctx)
    ensure_writable(out, force=force)
    if key_bits is not None and key_bits < SECURE_KEY_BITS:
        say(f"Warning: {key_bits}-bit Paillier keys are insecure, for tests only")
    old, new, notice = keyring.rotate(ws, key_bits, allow_insecure=insecure_test_keys)
    (replace_atomic if force else write_new)(out, notice)
    if as_json:
        emit_json({"name": ws.name, "notice": str(out),
                   "old": {"signing_fingerprint": old.signing_fingerprint,
                           "paillier_fingerprint": old.paillier_fingerprint},
                   "new": {"signing_fingerprint": new.signing_fingerprint,
                           "paillier_fingerprint": new.paillier_fingerprint}})
    say(f"New signing key {short(new.signing_fingerprint)} (was {short(old.signing_fingerprint)}), "
        f"Paillier key {short(new.paillier_fingerprint)}")
    say(f"Wrote {out}; send it to every peer, who runs 'vfl keys import {out.name}'")


@keys.command()
@click.argument("peer")
@click.option("--notice", "notice", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a removal notice, signed by this party, to send to the peer.")
@force_option
@json_option
@click.pass_context
def remove(ctx: click.Context, peer: str, notice: Path | None, force: bool, as_json: bool) -> None:
    """Stop trusting PEER: its card moves to peers/removed/, and its files and proposals are refused.

    Files it sent before still verify in 'vfl audit verify'. Refused while a job with PEER is
    running (cancel it first). To trust it again, import its card again.

    Example:

    \b
        vfl keys remove bureau --notice bank-removes-bureau.notice
    """
    from vfl_cli import keyring

    ws = workspace(ctx)
    if notice is not None:
        ensure_writable(notice, force=force)
    card, data = keyring.remove_peer(ws, peer)
    if notice is not None:
        (replace_atomic if force else write_new)(notice, data)
    if as_json:
        emit_json({"name": card.name, "removed": True, "notice": str(notice) if notice else None})
    say(f"Removed {card.role} party '{card.name}' (signing key {short(card.signing_fingerprint)}); "
        "its card is in peers/removed/")
    if notice is not None:
        say(f"Wrote {notice}; send it to {card.name}")


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
    rows: list[dict[str, Any]] = [{"name": c.name, "role": c.role, "self": c.name == ws.name,
             "paillier_bits": c.paillier.bits if c.paillier is not None else None,
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
                      f"{r['paillier_bits']} bits" if r["paillier_bits"] else "none", short(r["paillier_fingerprint"]),
                      short(r["signing_fingerprint"]))
    print_result(table)


COMMANDS = [keys]
