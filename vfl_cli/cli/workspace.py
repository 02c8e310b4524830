"""``vfl init`` and ``vfl keygen``."""

from __future__ import annotations

from pathlib import Path

import click

from vfl_cli.cli._console import emit_json, say
from vfl_cli.cli._options import json_option, workspace
from vfl_cli.crypto.signing import short
from vfl_cli.workspace import SECURE_KEY_BITS, Workspace


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="Party name (default: the folder's name).")
@click.option("--role", type=click.Choice(["active", "passive", "server", "worker", "predictor"]),
              required=True, help="active: holds the labels; passive: holds features only "
              "(vertical learning); server, worker, predictor: multi-node training (vfl hfl).")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The party's CSV file (read, never modified or copied).")
@click.option("--id-column", required=True, help="Column holding the ids to align on.")
@click.option("--label-column", help="Column holding the labels (active party only).")
@json_option
def init(directory: Path, name: str | None, role: str, data: Path, id_column: str,
         label_column: str | None, as_json: bool) -> None:
    """Create a party workspace in DIRECTORY.

    Example:

    \b
        vfl init bank --role active --data bank.csv --id-column id --label-column default
    """
    ws = Workspace.init(directory, name=name or directory.resolve().name.lower(), role=role,
                        data=data, id_column=id_column, label_column=label_column)
    if as_json:
        emit_json({"workspace": str(ws.root), "name": ws.name, "role": ws.role})
    say(f"Created {ws.role} party '{ws.name}' in {ws.root}")
    say(f"Next: cd {directory} && vfl keygen")


@click.command()
@click.option("--key-bits", default=SECURE_KEY_BITS, show_default=True, type=int,
              help="Paillier modulus size (2048 or 3072 for real use).")
@click.option("--insecure-test-keys", is_flag=True, hidden=True,
              help="Allow keys below 1024 bits (tests only).")
@json_option
@click.pass_context
def keygen(ctx: click.Context, key_bits: int, insecure_test_keys: bool, as_json: bool) -> None:
    """Create this party's Paillier keypair and Ed25519 signing key.

    The Paillier key is stored in python-paillier's JWK format (keys/paillier.jwk, mode 0600),
    so phe's own tools read it. Private keys never leave the workspace.

    Example:

    \b
        vfl keygen --key-bits 2048
    """
    ws = workspace(ctx)
    if key_bits < SECURE_KEY_BITS:
        say(f"Warning: {key_bits}-bit Paillier keys are insecure, for tests only")
    card = ws.generate_keys(key_bits, allow_insecure=insecure_test_keys)
    if as_json:
        emit_json({"paillier_fingerprint": card.paillier_fingerprint,
                   "signing_fingerprint": card.signing_fingerprint, "key_bits": key_bits})
    say(f"Paillier key ({key_bits} bits): {short(card.paillier_fingerprint)}")
    say(f"Signing key (Ed25519):     {short(card.signing_fingerprint)}")
    say(f"Next: vfl keys export --out {ws.name}.card, and send the card to your peers")


COMMANDS = [init, keygen]
