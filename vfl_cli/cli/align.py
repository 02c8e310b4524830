"""``vfl align``: private set intersection over files (start, respond, finish, export)."""

from __future__ import annotations

from pathlib import Path

import click

from vfl_cli import jobs as engine
from vfl_cli.artifacts.io import ensure_writable
from vfl_cli.cli._console import progress_bars, say
from vfl_cli.cli._options import force_option, json_option, out_option, workspace
from vfl_cli.cli.jobs import report


data_option = click.option(
    "--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Align another CSV of this party (same columns, e.g. new rows to score); stays local.")


@click.group()
def align() -> None:
    """Align ids with private set intersection: start, respond, finish.

    Three hand-offs for any number of passive parties. Every party ends with the ids all
    parties hold, in the same jointly shuffled order; nobody learns any other id.

    Example:

    \b
        bank$   vfl align start --with bureau
        bureau$ vfl align respond
        bank$   vfl align finish
        bureau$ vfl align finish
    """


@align.command()
@click.option("--with", "peers", multiple=True, help="Passive party to align with (repeat; default: all).")
@click.option("--job", "job_id", help="Job id (default: psi-<date>-<random>).")
@data_option
@json_option
@click.pass_context
def start(ctx: click.Context, peers: tuple[str, ...], job_id: str | None, data: Path | None,
          as_json: bool) -> None:
    """Active party: propose an alignment job and send the blinded ids.

    Example:

    \b
        vfl align start --with bureau --job align-2026-11
    """
    ws = workspace(ctx)
    with progress_bars() as progress:
        r = engine.start_job(ws, "psi", {}, peers=list(peers) or None, job=job_id, data=data,
                             progress=progress)
    report([r], as_json, ws.name)


@align.command()
@click.argument("job_id", required=False)
@data_option
@json_option
@click.pass_context
def respond(ctx: click.Context, job_id: str | None, data: Path | None, as_json: bool) -> None:
    """Passive party: accept the alignment proposal in the inbox and answer it.

    Example:

    \b
        vfl align respond align-2026-11
    """
    ws = workspace(ctx)
    with progress_bars() as progress:
        reports = engine.accept_job(ws, job_id, data=data, progress=progress)
    report(reports, as_json, ws.name)


@align.command()
@click.argument("job_id", required=False)
@json_option
@click.pass_context
def finish(ctx: click.Context, job_id: str | None, as_json: bool) -> None:
    """Either party: take the next alignment step with the files in the inbox.

    The active party intersects and sends each passive party its result; a passive party
    reads that result. Afterwards 'vfl job show JOB' gives the intersection size.

    Example:

    \b
        vfl align finish align-2026-11
    """
    ws = workspace(ctx)
    with progress_bars() as progress:
        reports = engine.step(ws, job_id, progress=progress)
    report(reports, as_json, ws.name)


@align.command()
@click.argument("job_id")
@out_option("CSV file for this party's own columns, in the aligned order.")
@force_option
@click.pass_context
def export(ctx: click.Context, job_id: str, out: Path, force: bool) -> None:
    """Write this party's own rows in the aligned order (its own columns only).

    Example:

    \b
        vfl align export align-2026-11 --out aligned.csv
    """
    ws = workspace(ctx)
    from vfl_cli.models.alignment import aligned_frame

    ensure_writable(out, force=force)
    frame = aligned_frame(ws, job_id)
    frame.to_csv(out, index=False)
    say(f"Wrote {len(frame)} aligned rows of {ws.name}'s own columns to {out}")


COMMANDS = [align]
