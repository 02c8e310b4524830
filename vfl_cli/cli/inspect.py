"""``vfl inspect``: what is in an artifact; its plaintext members only for its sender or recipient.

Every string shown comes from an untrusted file, so each goes through :func:`safe` (or
:func:`printable` where markup is off): a field cannot print a fake line or break the output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vfl_cli.artifacts.container import MEMBER_TYPES, Loaded, read_artifact
from vfl_cli.cli._console import emit_json, printable, safe, status_console
from vfl_cli.cli._options import json_option
from vfl_cli.errors import VflError
from vfl_cli.workspace import Workspace

_PREVIEW = 6


def _size_cap(ws_dir: str | None) -> dict[str, Any]:
    """Inside a workspace, its max_file_size setting bounds the file read; elsewhere the default."""
    try:
        ws = Workspace.find(Path(ws_dir) if ws_dir else None)
    except VflError:
        return {}
    return {"max_bytes": ws.max_file_size, "limit": ws.size_limit()}


def _verified(loaded: Loaded, ws_dir: str | None) -> tuple[str, Loaded]:
    """The signature status, and the artifact opened when this workspace may read its payload."""
    try:
        ws = Workspace.find(Path(ws_dir) if ws_dir else None)
        loaded.verify(ws.verifier_for(loaded.artifact.sender), what="artifact")
    except VflError as exc:
        return f"not verified: {exc}", loaded
    status = f"valid ({loaded.artifact.sender}'s key trusted by {ws.name})"
    if ws.name not in (loaded.artifact.recipient, loaded.artifact.sender):
        return status, loaded
    try:
        return status, loaded.open(ws.signer, ws.name)
    except VflError as exc:
        return f"{status}; payload not opened: {exc}", loaded


def _plaintext(loaded: Loaded, name: str) -> dict[str, Any]:
    """What an opened member holds: array values (a preview) or the count of protected values."""
    member = loaded.artifact.members[name]
    if member.type != "ndarray":
        return {"bytes": len(member.data), "values": f"{MEMBER_TYPES[member.type]}, not shown"}
    try:
        array = loaded.artifact.array(name)
    except VflError as exc:
        return {"bytes": len(member.data), "values": f"unreadable: {exc}"}
    flat = array.ravel()
    preview = flat[:_PREVIEW].tolist() if flat.dtype.kind in "biuf" else [str(v) for v in flat[:_PREVIEW]]
    return {"bytes": len(member.data), "values": preview, "more": max(0, int(flat.size) - _PREVIEW)}


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def inspect(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Show an artifact: kind, job, sender, recipient, members, what is encrypted.

    Needs no private key: anyone sees the signed manifest (kinds, counts, sizes). Inside the
    workspace of its sender or recipient it checks the signature and, if valid, opens the
    sealed payload and shows the members' values.

    Example:

    \b
        vfl inspect outbox/psi-20261122-3f2a9c.001.job-proposal.bank-to-bureau.zip
    """
    ws_dir = ctx.find_root().params.get("workspace")
    loaded = read_artifact(file, **_size_cap(ws_dir))
    signature, opened = _verified(loaded, ws_dir)
    plaintext = {n: _plaintext(opened, n) for n in opened.artifact.members} if opened.opened else {}
    if as_json:
        emit_json({"file": str(file), "sha256": loaded.sha256, "size": loaded.size,
                   "signature": signature, "opened": opened.opened, "manifest": dict(loaded.manifest),
                   "plaintext": plaintext})
        return
    _show(file, loaded, signature, plaintext)


def _show(file: Path, loaded: Loaded, signature: str, plaintext: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    console = status_console()
    a = loaded.artifact
    # One screen line each, cut with "…" rather than wrapped: a long received value can never
    # start a line of its own (a wrapped "signature: valid" would read as the real one).
    line: dict[str, Any] = {"no_wrap": True, "overflow": "ellipsis"}
    console.print(f"[bold]{safe(file.name)}[/bold]  ({loaded.size:,} bytes, sha256 {loaded.sha256[:16]}…)", **line)
    console.print(f"kind {safe(a.kind)}  job {safe(a.job)}  step {a.seq} ({safe(a.step)})  round {a.round}", **line)
    console.print(f"from {safe(a.sender)} to {safe(a.recipient)}, created {safe(a.created)}", **line)
    console.print(f"signature: {printable(signature)}", markup=False, soft_wrap=True)
    if a.meta:
        console.print("meta:", markup=False)
        for text in json.dumps(dict(a.meta), indent=2, sort_keys=True, ensure_ascii=False).splitlines():
            console.print(printable(text), markup=False, **line)
    table = Table(title=f"payload members ({'opened' if plaintext else 'sealed: manifest only'})")
    for col in ("member", "content", "shape / count", "key", "bytes", "values"):
        table.add_column(col)
    for name, desc in loaded.manifest["members"].items():
        shape = desc.get("shape", desc.get("count", ""))
        shown = plaintext.get(name, {}).get("values", "")
        more = plaintext.get(name, {}).get("more", 0)
        values = (", ".join(map(str, shown)) + (f" … (+{more:,})" if more else "")
                  if isinstance(shown, list) else shown)
        table.add_row(safe(name), MEMBER_TYPES[desc["type"]], safe(shape), safe(str(desc.get("key_id", ""))[:16]),
                      f"{desc['size']:,}", safe(values))
    console.print(table)


COMMANDS = [inspect]
