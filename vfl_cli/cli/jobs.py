"""``vfl job`` and ``vfl step``: propose, accept and advance jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from vfl_cli import jobs as engine
from vfl_cli.artifacts.io import shown_path
from vfl_cli.cli._console import emit_json, print_result, progress_bars, say
from vfl_cli.cli._options import json_option, workspace
from vfl_cli.errors import VflError


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, true, lists)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise VflError(f"--param {pair!r} must look like key=value")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def report(reports: list[engine.StepReport], as_json: bool, ws_name: str,
           rejected: list[dict[str, str]] | None = None) -> None:
    """Tell the user what happened and exactly which file goes to whom."""
    if as_json:
        emit_json([r.to_dict() for r in reports])
    for x in rejected or []:  # every file this command quarantined, of any job or none
        say(f"Rejected {shown_path(x['file'])}: moved to inbox/{engine.REJECTED}/, because "
            f"{shown_path(x['reason'])}")
    if not reports:
        say("Nothing to do: no job waits on this party.")
    for r in reports:
        _report_files(r)
        _report_state(r)


def _report_files(r: engine.StepReport) -> None:
    """The files one job accepted and wrote."""
    for name in r.received:
        say(f"[{r.job}] accepted {name}")
    for s in r.sent:
        say(f"[{r.job}] wrote outbox/{s['file']}  -> carry it to {s['recipient']}'s inbox")


def _report_state(r: engine.StepReport) -> None:
    """Where one job stands: cancelled, done or waiting."""
    if r.phase == "cancelled":
        c = r.results.get("cancelled", {})
        say(f"[{r.job}] cancelled by {c.get('by', '?')}" + (f": {c['reason']}" if c.get("reason") else ""))
    elif r.done:
        say(f"[{r.job}] done ({r.protocol})")
        if r.protocol == "psi" and (r.received or r.sent):  # finished by this command
            _alignment_warning(r.job)
    elif r.waiting_for:
        say(f"[{r.job}] waiting for {'; '.join(r.waiting_for)}; then run 'vfl step' again")


def _alignment_warning(job: str) -> None:
    """An empty or suspiciously small intersection is said, with hints on the id format."""
    from vfl_cli.id_report import job_warning

    warning = job_warning(workspace(click.get_current_context()), job)
    if warning:
        say(f"Warning: [{job}] {warning}")


def _imputed_notes(ws: Any, reports: list[engine.StepReport]) -> None:
    """How many empty cells of this party's rows each accepted job fills (its job.json says)."""
    from vfl_cli.columns import imputed_line

    for r in reports:
        note = imputed_line(engine.load_info(ws, r.job))
        if note:
            say(f"Note: {note}")


@click.group()
def job() -> None:
    """Propose, accept, list and show jobs.

    Example:

    \b
        vfl job start --protocol handshake --with bureau
    """


@job.command()
@click.option("--protocol", "-p", required=True, help="Protocol to run (e.g. handshake, psi, hetero-lr).")
@click.option("--with", "peers", multiple=True, help="Peer to include (repeat; default: all trusted peers).")
@click.option("--param", "params", multiple=True, help="Protocol parameter key=value (repeat).")
@click.option("--job", "job_id", help="Job id (default: <protocol>-<date>-<random>).")
@json_option
@click.pass_context
def start(ctx: click.Context, protocol: str, peers: tuple[str, ...], params: tuple[str, ...],
          job_id: str | None, as_json: bool) -> None:
    """Propose a job to peers and take this party's first step.

    Writes a signed proposal (and any first message) for each peer to the outbox.

    Example:

    \b
        vfl job start --protocol handshake --with bureau
    """
    ws = workspace(ctx)
    with progress_bars() as progress:
        r = engine.start_job(ws, protocol, parse_params(params), peers=list(peers) or None,
                             job=job_id, progress=progress)
    report([r], as_json, ws.name)


@job.command()
@click.argument("job_id", required=False)
@json_option
@click.pass_context
def accept(ctx: click.Context, job_id: str | None, as_json: bool) -> None:
    """Accept job proposals waiting in the inbox (all, or JOB_ID) and take the first step.

    Check the parameters first with 'vfl inspect inbox/<file>'.

    Example:

    \b
        vfl job accept handshake-20261122-3f2a9c
    """
    ws = workspace(ctx)
    rejected: list[dict[str, str]] = []
    with progress_bars() as progress:
        reports = engine.accept_job(ws, job_id, progress=progress, rejected=rejected)
    _imputed_notes(ws, reports)
    report(reports, as_json, ws.name, rejected)


@job.command(name="list")
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List this party's jobs.

    Example:

    \b
        vfl job list --json
    """
    from rich.table import Table

    ws = workspace(ctx)
    rows = engine.list_jobs(ws)
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"Jobs of {ws.name}")
    for col in ("job", "protocol", "proposer", "phase", "done"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["job"], r["protocol"], r["proposer"], r["phase"], "yes" if r["done"] else "no")
    print_result(table)


@job.command()
@click.argument("job_id")
@json_option
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show one job: protocol, parameters, parties, phase and results.

    Example:

    \b
        vfl job show psi-20261122-3f2a9c --json
    """
    ws = workspace(ctx)
    info = engine.load_info(ws, job_id)
    state, _ = engine.load_state(ws, job_id)
    out = dict(info, phase=state.phase, done=state.done, results=state.results)
    from vfl_cli.status import job_traffic

    out["handoffs"] = job_traffic(ws, job_id)  # this party's side: files it sent and received
    if as_json:
        emit_json(out)
        return
    from rich.json import JSON

    print_result(JSON(json.dumps(out, default=str)))


reason_option = click.option("--reason", default="", help="Why, in a few words (sent in the signed notice).")


@job.command()
@click.argument("job_id")
@reason_option
@json_option
@click.pass_context
def cancel(ctx: click.Context, job_id: str, reason: str, as_json: bool) -> None:
    """Cancel a job: it stops here, and every other party gets a signed notice and stops too.

    Carry the notice files it writes like any other. 'vfl step' no longer lists the job.

    Example:

    \b
        vfl job cancel hetero-lr-20261122-3f2a9c --reason "wrong alignment"
    """
    ws = workspace(ctx)
    report([engine.cancel_job(ws, job_id, reason=reason)], as_json, ws.name)


@job.command()
@click.argument("job_id")
@reason_option
@json_option
@click.pass_context
def reject(ctx: click.Context, job_id: str, reason: str, as_json: bool) -> None:
    """Refuse the proposal for JOB_ID waiting in the inbox; the proposer gets a signed notice.

    Example:

    \b
        vfl job reject hetero-lr-20261122-3f2a9c --reason "epochs too high"
    """
    ws = workspace(ctx)
    report([engine.reject_job(ws, job_id, reason=reason)], as_json, ws.name)


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--job", "job_id", help="Advance only this job.")
@json_option
@click.pass_context
def step(ctx: click.Context, files: tuple[Path, ...], job_id: str | None, as_json: bool) -> None:
    """Advance whatever job waits on this party, using the files in the inbox.

    FILES, if given, are checked and copied into the inbox first. Prints which file to carry
    to whom next. An inbox file that fails a check (damaged, not signed by a trusted peer,
    for another party, replayed, for an unknown job) is moved to inbox/rejected/ with a
    .reason.txt beside it, and listed; the other files and jobs go on. A file that came
    before its turn waits.

    Example:

    \b
        vfl step ~/drop/psi-20261122-3f2a9c.002.psi-response.bureau-to-bank.zip
    """
    ws = workspace(ctx)
    if files:
        engine.receive_files(ws, list(files))
    rejected: list[dict[str, str]] = []
    with progress_bars() as progress:
        reports = engine.step(ws, job_id, progress=progress, rejected=rejected)
    pending = engine.pending_proposals(ws)
    report(reports, as_json, ws.name, rejected)
    for name, loaded in pending:
        say(f"Proposal {name} from {loaded.artifact.sender} waits: check it with "
            f"'vfl inspect inbox/{name}', then run 'vfl job accept {loaded.artifact.job}'")


COMMANDS = [job, step]
