"""``vfl status``: what waits on whom, git-style."""

from __future__ import annotations

from typing import Any

import click

from vfl_cli.cli._console import emit_json, print_result, printable
from vfl_cli.cli._options import json_option, workspace
from vfl_cli.status import workspace_status


def _position(j: dict[str, Any]) -> list[str]:
    """How far a training job is: epochs finished, or the round under way."""
    if j["done"]:
        return []
    if j["epochs_done"] is not None:
        return [f"{j['epochs_done']}" + (f"/{j['epochs']}" if j["epochs"] else "") + " epochs done"]
    if j["round"] is not None:
        return [f"round {j['round']}" + (f"/{j['rounds']}" if j["rounds"] else "")]
    return []


def _job_line(j: dict[str, Any]) -> str:
    state = "cancelled" if j["cancelled"] else "done" if j["done"] else j["phase"]
    parts = [f"  {j['job']}  {j['protocol']}  {state}"]
    parts += _position(j)
    if j["loss"] is not None:
        parts.append(f"loss {j['loss']:.4f}")
    parts.append(f"{j['sent']} sent, {j['received']} received")
    return ", ".join(parts)


def _lines(s: dict[str, Any]) -> list[str]:
    lines = [f"Party {s['party']} ({s['role']})", "", f"Jobs ({len(s['jobs'])}):"]
    lines += [_job_line(j) for j in s["jobs"]] or ["  none"]
    lines += ["", f"Waiting in outbox to be carried ({len(s['outbox'])}):"]
    lines += [f"  {o['file']}  -> {o['recipient'] or '?'}"
              + (f" (delivered to {o['drop']} by 'vfl watch')" if o["drop"] else "")
              for o in s["outbox"]] or ["  nothing"]
    lines += ["", f"Arrived, not used yet ({len(s['inbox'])}):"]
    lines += [f"  {f['file']}" + ("  (a proposal: vfl job accept / vfl job reject)" if f["proposal"] else "")
              for f in s["inbox"]] or ["  nothing"]
    if s["rejected"]:
        lines += ["", f"Rejected ({len(s['rejected'])}):"]
        lines += [f"  {r.get('file', '?')}: {r.get('reason', '')}".rstrip(": ") for r in s["rejected"]]
    if s["drops"] or s["pickup"]:
        lines += ["", "Drop folders:"]
        lines += [f"  to {peer}: {folder}" for peer, folder in sorted(s["drops"].items())]
        if s["pickup"]:
            lines.append(f"  pickup: {s['pickup']}")
    return lines


@click.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show jobs and their progress, files to carry and to whom, files arrived, files rejected.

    Reads only; safe to run beside 'vfl watch'.

    Example:

    \b
        vfl status
        vfl status --json
    """
    s = workspace_status(workspace(ctx))
    if as_json:
        emit_json(s)
        return
    from rich.text import Text

    # names come from files peers sent: printed as plain text, never as markup
    print_result(*(Text(printable(line)) for line in _lines(s)))


COMMANDS = [status]
