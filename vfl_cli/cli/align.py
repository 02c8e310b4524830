"""``vfl align``: private set intersection over files (start, respond, finish, export)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vfl_cli import jobs as engine
from vfl_cli.artifacts.io import ensure_writable
from vfl_cli.cli._console import progress_bars, say
from vfl_cli.cli._options import force_option, json_option, out_option, workspace
from vfl_cli.cli.jobs import report
from vfl_cli.errors import VflError
from vfl_cli.workspace import Workspace

if TYPE_CHECKING:
    import pandas as pd

memory_option = click.option(
    "--memory", metavar="SIZE",
    help="Bound on this process's memory for this command, e.g. 256MB (default: the workspace's "
    "'memory' setting from 'vfl init --memory', else 2GB). An alignment whose in-memory peak "
    "would pass it streams in parts, with bounded memory.")


def use_memory(ws: Workspace, memory: str | None,
               effect: str = "an alignment whose in-memory peak would pass it streams in parts") -> None:
    """Apply --memory to this command (not saved) and say which bound is in use, and its
    ``effect`` (stderr)."""
    from vfl_cli.columns import memory_bound
    from vfl_cli.protocol.psi_stream import format_memory

    if memory is not None:
        ws.config["memory"] = memory
    bound = memory_bound(ws.config.get("memory"))
    source = ("--memory" if memory is not None else "workspace setting" if ws.config.get("memory")
              else "VFL_MEMORY" if os.environ.get("VFL_MEMORY") else "default")
    say(f"Memory bound: {format_memory(bound)} ({source}); {effect}")


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
@click.option("--job", "job_id", help="Job id (default: psi-<date>-<random>; <cache>-q<N> with --cache).")
@click.option("--cache", "cache", metavar="JOB",
              help="Use the cached set of this psi-cache job (see 'vfl align cache'): the work and "
              "files are proportional to this party's ids only.")
@data_option
@memory_option
@json_option
@click.pass_context
def start(ctx: click.Context, peers: tuple[str, ...], job_id: str | None, cache: str | None,
          data: Path | None, memory: str | None, as_json: bool) -> None:
    """Active party: propose an alignment job and send the blinded ids.

    With --cache, align a small set (say new applicants in --data) with the passive party's
    cached set: the job is named <cache>-q<N>, N counting this cache's queries.

    Example:

    \b
        vfl align start --with bureau --job align-2026-11
        vfl align start --cache psi-cache-20261201-a1b2c3 --data applicants.csv
        vfl align start --with bureau --memory 256MB
    """
    ws = workspace(ctx)
    use_memory(ws, memory)
    params: dict[str, str] = {}
    if cache is not None:
        params["cache"] = cache
        owner = engine.load_info(ws, cache)
        peers = peers or tuple(p["name"] for p in owner["parties"] if p["name"] != ws.name)
        job_id = job_id or next_query_id(ws, cache)
    with progress_bars() as progress:
        r = engine.start_job(ws, "psi", params, peers=list(peers) or None, job=job_id, data=data,
                             progress=progress)
    report([r], as_json, ws.name)


def next_query_id(ws: Workspace, cache: str) -> str:
    """``<cache>-q<N>`` with N one more than the highest query of ``cache`` in this workspace."""
    used = [0]
    for job in engine.list_jobs(ws):
        name = job["job"]
        if name.startswith(f"{cache}-q") and name[len(cache) + 2:].isdigit():
            used.append(int(name[len(cache) + 2:]))
    return f"{cache}-q{max(used) + 1}"


@align.command(name="cache")
@click.option("--with", "peer", required=True, help="The active party that may use the cache.")
@click.option("--job", "job_id", help="Job id (default: psi-cache-<date>-<random>).")
@click.option("--max-queries", type=int, default=30, show_default=True,
              help="Alignments the cache may serve.")
@click.option("--max-query-ids", type=int, default=100_000, show_default=True,
              help="Ids per alignment.")
@click.option("--valid-days", type=int, default=30, show_default=True, help="Days until it expires.")
@data_option
@memory_option
@json_option
@click.pass_context
def cache_command(ctx: click.Context, peer: str, job_id: str | None, max_queries: int,
                  max_query_ids: int, valid_days: int, data: Path | None, memory: str | None,
                  as_json: bool) -> None:
    """Passive party: publish this party's blinded ids once, for cheap later alignments.

    The active party keeps the cache (it runs 'vfl align respond' on it) and then aligns small
    sets with 'vfl align start --cache JOB'. The ids are read, blinded and sorted in chunks
    within --memory, whatever their number; the cache is one file. This party answers at most --max-queries of them,
    each of at most --max-query-ids ids, for --valid-days days, and only for that peer.

    Example:

    \b
        bureau$ vfl align cache --with bank --max-queries 30 --valid-days 30
        bureau$ vfl align cache --with bank --memory 512MB
    """
    ws = workspace(ctx)
    use_memory(ws, memory, "the ids are read, blinded and sorted in chunks within it")
    params = {"max_queries": max_queries, "max_query_ids": max_query_ids, "valid_days": valid_days}
    with progress_bars() as progress:
        r = engine.start_job(ws, "psi-cache", params, peers=[peer], job=job_id, data=data,
                             progress=progress)
    report([r], as_json, ws.name)


@align.command()
@click.argument("job_id", required=False)
@data_option
@memory_option
@json_option
@click.pass_context
def respond(ctx: click.Context, job_id: str | None, data: Path | None, memory: str | None, as_json: bool) -> None:
    """Passive party: accept the alignment proposal in the inbox and answer it.

    Example:

    \b
        vfl align respond align-2026-11
    """
    ws = workspace(ctx)
    use_memory(ws, memory)
    with progress_bars() as progress:
        reports = engine.accept_job(ws, job_id, data=data, progress=progress)
    report(reports, as_json, ws.name)


@align.command()
@click.argument("job_id", required=False)
@memory_option
@json_option
@click.pass_context
def finish(ctx: click.Context, job_id: str | None, memory: str | None, as_json: bool) -> None:
    """Either party: take the next alignment step with the files in the inbox.

    The active party intersects and sends each passive party its result; a passive party
    reads that result. Afterwards 'vfl job show JOB' gives the intersection size.

    Example:

    \b
        vfl align finish align-2026-11
    """
    ws = workspace(ctx)
    use_memory(ws, memory)
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
    ensure_writable(out, force=force)
    frame = _aligned_frame(ws, job_id)
    frame.to_csv(out, index=False)
    say(f"Wrote {len(frame)} aligned rows of {ws.name}'s own columns to {out}")


def _aligned_frame(ws: Workspace, job: str) -> pd.DataFrame:
    """This party's rows (own columns only) in the aligned order of a finished psi job."""
    from vfl_cli.models.features import aligned_rows

    info = engine.load_info(ws, job)
    state, _ = engine.load_state(ws, job)
    if info["protocol"] != "psi":
        raise VflError(f"job {job} is a {info['protocol']} job, not an alignment (psi) job")
    if not state.done:
        raise VflError(f"alignment job {job} is not finished yet (phase {state.phase}); run 'vfl step'")
    data = ws.read_data(Path(info["data"])) if info.get("data") else ws.read_data()
    return aligned_rows(data, state.arrays, ws.config["id_column"], job).reset_index(drop=True)


COMMANDS = [align]
