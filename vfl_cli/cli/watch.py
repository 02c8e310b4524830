"""``vfl watch`` and ``vfl peers``: drop folders per peer, and the loop that runs jobs by itself."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType

import click

from vfl_cli import drops
from vfl_cli.cli._console import emit_json, printable, say
from vfl_cli.cli._options import json_option, workspace
from vfl_cli.watch import Watcher, load_policy

folder_type = click.Path(file_okay=False, path_type=Path)


@click.group()
def peers() -> None:
    """Where files for each peer are delivered, and where files for this party arrive.

    A mounted SFTP, SMB or synced folder is just a folder.

    Example:

    \b
        vfl peers set-drop bureau /mnt/sftp/to-bureau
        vfl peers set-pickup /mnt/sftp/to-bank
    """


@peers.command(name="set-drop")
@click.argument("peer")
@click.argument("folder", type=folder_type)
@click.pass_context
def set_drop(ctx: click.Context, peer: str, folder: Path) -> None:
    """Deliver every outgoing file for PEER into FOLDER ('vfl watch' or 'vfl peers deliver').

    Files appear there whole (written under a hidden name, then renamed) and leave the outbox.

    Example:

    \b
        vfl peers set-drop bureau /mnt/sftp/to-bureau
    """
    target = drops.set_drop(workspace(ctx), peer, folder)
    say(f"Files for {peer} will be delivered to {target}")


@peers.command(name="set-pickup")
@click.argument("folder", type=folder_type)
@click.pass_context
def set_pickup(ctx: click.Context, folder: Path) -> None:
    """Move files addressed to this party from FOLDER into the inbox ('vfl watch').

    Example:

    \b
        vfl peers set-pickup /mnt/sftp/to-bank
    """
    ws = workspace(ctx)
    target = drops.set_pickup(ws, folder)
    say(f"Files for {ws.name} will be picked up from {target}")


@peers.command()
@json_option
@click.pass_context
def deliver(ctx: click.Context, as_json: bool) -> None:
    """Once, without watching: deliver outbox files to drop folders and pick up incoming files.

    Example:

    \b
        vfl peers deliver
    """
    ws = workspace(ctx)
    picked, sent = drops.pick_up(ws), drops.deliver(ws)
    if as_json:
        emit_json({"picked_up": [m.to_dict() for m in picked], "delivered": [m.to_dict() for m in sent]})
    for m in picked:
        say(printable(f"picked up {m.file} from {m.folder}"))
    for m in sent:
        say(printable(f"delivered {m.file} to {m.peer} ({m.folder})"))


def _logger(ws_name: str) -> Callable[[str], None]:
    def log(line: str) -> None:
        # one line per event on stderr, even with --quiet: the log is what watch is for
        # names and reasons come from files peers sent: control characters made visible
        click.echo(f"{datetime.now():%H:%M:%S} {ws_name}: {printable(line)}", err=True)
        sys.stderr.flush()

    return log


@click.command()
@click.option("--policy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file saying which proposals are accepted without a person "
              "(default: none are; they wait for 'vfl job accept').")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds between passes over the pickup folder and the inbox.")
@click.option("--once", is_flag=True, help="One pass, then exit (for cron).")
@click.option("--until", "until", multiple=True, metavar="JOB",
              help="Exit when JOB is done here (repeat); exit 1 if it is cancelled.")
@click.option("--timeout", type=click.FloatRange(1), help="With --until: give up (exit 1) after this many seconds.")
@click.pass_context
def watch(ctx: click.Context, policy: Path | None, interval: float, once: bool, until: tuple[str, ...],
          timeout: float | None) -> None:
    """Run every job as files arrive: pick up, step, accept by policy, deliver; log each event.

    Each pass moves files for this party from the pickup folder into the inbox, steps every
    unfinished job, accepts the proposals the policy allows, and delivers outbox files to each
    peer's drop folder. A bad file or a failed step is logged and the loop goes on. Ctrl-C or
    SIGTERM stops it after the current step. Policy format: see docs/getting-started.md.

    Example:

    \b
        vfl watch --policy policy.toml
        vfl watch --once            # from cron
    """
    ws = workspace(ctx)
    watcher = Watcher(ws, load_policy(policy) if policy else None, _logger(ws.name))

    def stop(signum: int, frame: FrameType | None) -> None:
        watcher.log(f"{signal.Signals(signum).name}: stopping after the current step")
        watcher.stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not once:
            watcher.log(f"watching {ws.root} every {interval:g} s (Ctrl-C to stop)")
        watcher.run(interval=interval, once=once, until=list(until), timeout=timeout)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not once:
        watcher.log("stopped")


COMMANDS = [peers, watch]
