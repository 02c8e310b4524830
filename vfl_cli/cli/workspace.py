"""``vfl init``, ``vfl keygen`` and ``vfl columns``."""

from __future__ import annotations

from pathlib import Path

import click

from vfl_cli.cli._console import emit_json, print_result, say
from vfl_cli.cli._options import json_option, workspace
from vfl_cli.columns import data_notes, describe, parse_encodings, save_choice
from vfl_cli.crypto.signing import short
from vfl_cli.errors import VflError
from vfl_cli.tables import detect_format
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
@click.option("--positive-label", help="For a label written as text (yes/no): the value that means 1.")
@click.option("--exclude", "exclude", multiple=True, metavar="COLUMN",
              help="Leave this column out of every job (repeat). Change later with 'vfl columns'.")
@click.option("--features", "features", metavar="A,B,...",
              help="Use only these feature columns (comma-separated); default: every other column.")
@click.option("--encode", "encode", multiple=True, metavar="COLUMN=KIND",
              help="Encode a text column in each job: onehot, ordinal or frequency, fitted on the "
              "party's own training rows (repeat).")
@click.option("--sep", help="Column separator: ',', ';', '\\t' or '|' (default: detected).")
@click.option("--decimal", help="Decimal mark of numbers: '.' or ',' (default: detected).")
@click.option("--encoding", help="Text encoding, e.g. cp1252 (default: UTF-8, with or without BOM).")
@click.option("--memory", metavar="SIZE", help="Bound on one vfl process's memory, e.g. 2GB (the default) "
              "or 256MB: alignments that would pass it stream in parts.")
@click.option("--max-file-size", metavar="SIZE",
              help="The largest file this party reads from peers, e.g. 4GiB (default 2GiB, room for a "
              "10M-id alignment). Change later with 'vfl config set max_file_size SIZE'.")
@json_option
def init(directory: Path, name: str | None, role: str, data: Path, id_column: str, label_column: str | None,
         positive_label: str | None, exclude: tuple[str, ...], features: str | None, encode: tuple[str, ...],
         sep: str | None, decimal: str | None, encoding: str | None, memory: str | None,
         max_file_size: str | None, as_json: bool) -> None:
    """Create a party workspace in DIRECTORY.

    The data file is checked now (ids, labels, text columns) and read again by each job: what
    is kept is its path, its id and label columns and the column choice, so a column removed
    from the file is simply not used. Excel's CSV files (UTF-8 BOM, ';' with decimal commas,
    quoted names, CRLF) are read as they are.

    Example:

    \b
        vfl init bank --role active --data bank.csv --id-column id --label-column default
        vfl init bureau --role passive --data bureau.csv --id-column id --exclude region
    """
    bound = None
    if memory is not None:
        from vfl_cli.protocol.psi_stream import parse_memory

        bound = parse_memory(memory)  # refused before anything is written
    choice = {"csv": {"sep": sep, "decimal": decimal, "encoding": encoding}, "exclude": list(exclude),
              "features": _names(features), "positive_label": positive_label, "encode": parse_encodings(encode),
              "memory": bound}  # the data file is checked a chunk at a time under this bound
    ws = Workspace.init(directory, name=name or directory.resolve().name.lower(), role=role,
                        data=data, id_column=id_column, label_column=label_column,
                        max_file_size=max_file_size, **choice)
    if memory is not None:
        from vfl_cli.artifacts.io import pretty_json, replace_atomic

        ws.config["memory"] = memory
        replace_atomic(ws.path("vfl.json"), pretty_json(ws.config))
    features_now = ws.features
    if as_json:
        emit_json({"workspace": str(ws.root), "name": ws.name, "role": ws.role, "features": features_now})
    say(f"Created {ws.role} party '{ws.name}' in {ws.root}")
    given = ws.config.get("csv") or {}
    how = (" ".join("--" + k for k in given) + " given, the rest detected" if given
           else "detected; --sep, --decimal, --encoding override")
    say(f"Read {data.name} with {detect_format(data, **given).describe()} ({how})")
    say(f"Features ({len(features_now)}): {', '.join(features_now[:10])}{', ...' if len(features_now) > 10 else ''}")
    for note in data_notes(ws.config):
        say(f"Note: {note}")
    say(f"Next: cd {directory} && vfl keygen")


def _names(text: str | None) -> list[str] | None:
    """A comma-separated list of column names (None when not given)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise VflError("--features needs at least one column name (comma-separated)")
    return names


@click.command()
@click.option("--exclude", multiple=True, metavar="COLUMN", help="Leave this column out of later jobs (repeat).")
@click.option("--include", multiple=True, metavar="COLUMN", help="Use an excluded column again (repeat).")
@click.option("--features", metavar="A,B,...", help="Use only these feature columns (comma-separated).")
@click.option("--all", "every", is_flag=True, help="Use every column but the id and label again.")
@click.option("--encode", multiple=True, metavar="COLUMN=KIND",
              help="Encode a text column in later jobs: onehot, ordinal, frequency, or none (repeat).")
@json_option
@click.pass_context
def columns(ctx: click.Context, exclude: tuple[str, ...], include: tuple[str, ...], features: str | None,
            every: bool, encode: tuple[str, ...], as_json: bool) -> None:
    """Show the columns of this party's data file, or choose which ones later jobs use.

    Each column is listed with its use (id, label, feature, excluded), its type, its encoding
    and its empty cells. A job keeps the columns it started with; a change applies to the next job.

    Example:

    \b
        vfl columns
        vfl columns --exclude region        # after "column 'region' is text"
        vfl columns --encode region=onehot  # or: use it, one 0/1 column per category
        vfl columns --all
    """
    ws = workspace(ctx)
    if exclude or include or features is not None or every or encode:
        chosen = save_choice(ws, exclude=list(exclude), include=list(include), features=_names(features),
                             every=every, encode=parse_encodings(encode))
        say(f"{ws.name} now uses {len(chosen)} feature column(s) in its next jobs")
    rows = describe(ws.config)
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"{ws.name}: {ws.config['data']}")
    for col in ("column", "use", "type", "encoding", "empty cells"):
        table.add_column(col, justify="right" if col == "empty cells" else "left")
    for r in rows:
        table.add_row(r["column"], r["use"], r["type"], r["encoding"] or "", str(r["empty_cells"]))
    print_result(table)


@click.command()
@click.option("--key-bits", default=SECURE_KEY_BITS, show_default=True, type=int,
              help="Paillier modulus size (2048 or 3072 for real use).")
@click.option("--insecure-test-keys", is_flag=True, hidden=True,
              help="Allow keys below 1024 bits (tests only).")
@click.option("--no-paillier", is_flag=True,
              help="Signing key only, for jobs that need no Paillier key (handshake, alignment, hfl without "
                   "secure aggregation); run 'vfl keygen' again later to add one.")
@json_option
@click.pass_context
def keygen(ctx: click.Context, key_bits: int, insecure_test_keys: bool, no_paillier: bool, as_json: bool) -> None:
    """Create this party's Paillier keypair and Ed25519 signing key.

    The Paillier key is stored in python-paillier's JWK format (keys/paillier.jwk, mode 0600),
    so phe's own tools read it. Private keys never leave the workspace. A party made with
    --no-paillier adds its Paillier key later with 'vfl keygen' (peers import the new card).

    Example:

    \b
        vfl keygen --key-bits 2048
    """
    ws = workspace(ctx)
    if key_bits < SECURE_KEY_BITS and not no_paillier:
        say(f"Warning: {key_bits}-bit Paillier keys are insecure, for tests only")
    card = ws.generate_keys(key_bits, allow_insecure=insecure_test_keys, with_paillier=not no_paillier)
    if as_json:
        emit_json({"paillier_fingerprint": card.paillier_fingerprint,
                   "signing_fingerprint": card.signing_fingerprint, "key_bits": None if no_paillier else key_bits})
    say(f"Paillier key ({key_bits} bits): {short(card.paillier_fingerprint)}" if card.paillier is not None
        else "Paillier key: none (made when a job needs one: 'vfl keygen')")
    say(f"Signing key (Ed25519):     {short(card.signing_fingerprint)}")
    say(f"Next: vfl keys export --out {ws.name}.card, and send the card to your peers")


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def config(ctx: click.Context, as_json: bool) -> None:
    """Show this party's settings (kept in vfl.json), or change one with 'vfl config set'.

    max_file_size: the largest file read from the inbox, a drop folder or 'vfl step FILE'
    (default 2 GiB). A larger file is moved to inbox/rejected/ with a reason naming the
    setting; raise it (up to 4 GiB, the most an artifact can hold) for very large jobs.
    memory: the bound on one vfl process's memory (as 'vfl init --memory').

    Example:

    \b
        vfl config
        vfl config set max_file_size 4GiB
    """
    if ctx.invoked_subcommand is not None:
        return
    ws = workspace(ctx)
    settings = ws.settings()
    if as_json:
        emit_json({k: {"value": v["value"], "default": v["default"]} for k, v in settings.items()})
        return
    for key, v in settings.items():
        print_result(f"{key} = {v['shown']}{' (default)' if v['default'] else ''}   {v['help']}")


@config.command("set")
@click.argument("setting")
@click.argument("value")
@json_option
@click.pass_context
def config_set(ctx: click.Context, setting: str, value: str, as_json: bool) -> None:
    """Change one setting of this party (checked, then written to vfl.json).

    Example:

    \b
        vfl config set max_file_size 4GiB
        vfl config set memory 512MB
    """
    ws = workspace(ctx)
    stored = ws.set_setting(setting, value)
    if as_json:
        emit_json({"setting": setting, "value": stored})
        return
    say(f"{ws.name}: {setting} = {ws.settings()[setting]['shown']} (in {ws.path('vfl.json')})")


COMMANDS = [init, keygen, columns, config]
