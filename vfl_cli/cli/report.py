"""``vfl report``: a self-contained HTML report of one job, as this party sees it."""

from __future__ import annotations

from pathlib import Path

import click

from vfl_cli import jobs as engine
from vfl_cli.artifacts.io import ensure_writable, replace_atomic, write_new
from vfl_cli.cli._console import say
from vfl_cli.cli._options import force_option, out_option, workspace
from vfl_cli.errors import VflError


@click.command()
@click.argument("job_id", required=False)
@out_option("HTML file to write.")
@force_option
@click.pass_context
def report(ctx: click.Context, job_id: str | None, out: Path, force: bool) -> None:
    """Write one self-contained HTML report of JOB_ID (default: the latest job).

    Parties and key fingerprints, parameters, this party's data file hash, the intersection
    size, the columns used and how each was encoded, metrics (loss names saying what they
    are), training curve over every epoch, ROC/KS curves, confusion matrix or residuals, node
    weights by party name, the audit status, and every artifact exchanged, built from this
    party's job state and ledger only: each party's report shows only what that party knows.

    Example:

    \b
        vfl report hetero-lr-20261122-3f2a9c --out report.html
    """
    from vfl_cli.report import build_report

    ws = workspace(ctx)
    ensure_writable(out, force=force)
    if job_id is None:
        known = sorted(engine.list_jobs(ws), key=lambda j: j["created"])
        if not known:
            raise VflError(f"{ws.name} has no jobs yet; start one with 'vfl align start' or 'vfl job start'")
        job_id = known[-1]["job"]
    page = build_report(ws, job_id).encode()
    (replace_atomic if force else write_new)(out, page)
    say(f"Wrote {out} ({len(page):,} bytes); open it in any browser, it needs no network")


COMMANDS = [report]
