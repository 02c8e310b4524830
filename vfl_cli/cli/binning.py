"""``vfl binning`` and ``vfl scorecard``: a party's own bins, WOE and IV, and its points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vfl_cli.artifacts.io import ensure_writable, replace_atomic, write_new
from vfl_cli.cli._console import emit_json, print_result, safe, say
from vfl_cli.cli._options import force_option, json_option, workspace
from vfl_cli.woe_select import TABLE_KEYS, binning_result, table_csv


def _cell(value: Any) -> str:
    return f"{value:+.4f}" if isinstance(value, float) else str(value)


@click.group()
def binning() -> None:
    """Results of WOE/IV binning jobs (vfl job start --protocol woe-binning).

    Example:

    \b
        vfl binning show wb1
        vfl binning show wb1 --csv bins.csv
    """


@binning.command()
@click.argument("job")
@json_option
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT",
              help="Also write one line per bin to this CSV file.")
@force_option
@click.pass_context
def show(ctx: click.Context, job: str, as_json: bool, csv_out: Path | None, force: bool) -> None:
    """Show this party's bins of JOB: rows, WOE and IV per bin, IV per column.

    Each party sees its own columns only. The active party also sees its event counts and,
    for every passive party, the IV of each column under an opaque column number (never the
    column's name or its cut points).

    Example:

    \b
        vfl binning show wb1
        vfl binning show wb1 --json
        vfl binning show wb1 --csv bins.csv
    """
    ws = workspace(ctx)
    if csv_out is not None:
        ensure_writable(csv_out, force=force)
    result = binning_result(ws, job)
    if csv_out is not None:
        (replace_atomic if force else write_new)(csv_out, table_csv(result["table"]).encode())
        say(f"Wrote {csv_out}")
    if as_json:
        emit_json({k: result[k] for k in ("party", "rows", "iv", "table", "passive")
                   if k in result})
        return
    from rich.table import Table

    keys = [k for k in TABLE_KEYS if any(k in r for r in result["table"])]
    table = Table(title=f"Bins of {safe(ws.name)} in job {safe(job)} ({result['rows']} rows)")
    for key in keys:
        table.add_column(key, justify="left" if key in ("column", "label") else "right")
    for row in result["table"]:
        table.add_row(*(safe(_cell(row.get(k, ""))) for k in keys))
    ivs = Table(title="Information value per column")
    ivs.add_column("column")
    ivs.add_column("IV", justify="right")
    for name, iv in sorted(result["iv"].items(), key=lambda kv: -kv[1]):
        ivs.add_row(safe(name), f"{iv:.4f}")
    for party, cols in result.get("passive", {}).items():
        for c in cols:
            ivs.add_row(safe(f"{party}: column #{c['column']}"), f"{c['iv']:.4f}")
    print_result(table, ivs)


@binning.group()
def cuts() -> None:
    """This party's own cut points and category columns for its bins (local only).

    They stay in this workspace (binning.json, 0600) and are copied into a woe-binning or
    secureboost job's local job.json when this party starts or accepts it: never into the
    proposal or any file sent. Other columns use the job's method and bins (secureboost:
    max_bins quantile bins).

    Example:

    \b
        vfl binning cuts set age 25,35,45,60
        vfl binning cuts set postcode --category
        vfl binning cuts show
    """


@cuts.command(name="set")
@click.argument("column")
@click.argument("values", required=False)
@click.option("--category", is_flag=True, help="Bin this column by category (one bin per value).")
@click.pass_context
def cuts_set(ctx: click.Context, column: str, values: str | None, category: bool) -> None:
    """Bin COLUMN at the cut points VALUES (comma-separated), or by category with --category.

    Bins are (-inf, c1], (c1, c2], ..., (cm, inf), plus a bin for missing values.

    Example:

    \b
        vfl binning cuts set age 25,35,45,60
        vfl binning cuts set region_code --category
    """
    from vfl_cli.bin_rules import load_rules, parse_cuts, save_rules
    from vfl_cli.errors import VflError

    ws = workspace(ctx)
    if (values is None) == (not category):
        raise VflError("give either cut points (vfl binning cuts set COLUMN 0,10,20) or "
                       "--category, not both or neither")
    if column not in ws.features:
        shown = ", ".join(ws.features[:12])
        raise VflError(f"{ws.name} has no feature column {column!r}; its columns are: {shown}")
    rules = load_rules(ws)
    rules = rules.with_category(column) if category else rules.with_cuts(
        column, parse_cuts(column, values or ""))
    save_rules(ws, rules)
    what = "by category" if category else f"at {len(rules.cuts[column])} cut points"
    say(f"{column} will be binned {what} in the woe-binning and secureboost jobs this party starts or accepts "
        "from now on")


@cuts.command(name="clear")
@click.argument("column", required=False)
@click.option("--all", "everything", is_flag=True, help="Clear every column's rule.")
@click.pass_context
def cuts_clear(ctx: click.Context, column: str | None, everything: bool) -> None:
    """Drop the rule of COLUMN (or of every column with --all): it goes back to the job's method.

    Example:

    \b
        vfl binning cuts clear age
    """
    from vfl_cli.bin_rules import load_rules, save_rules
    from vfl_cli.errors import VflError

    if (column is None) == (not everything):
        raise VflError("name a COLUMN or give --all")
    ws = workspace(ctx)
    save_rules(ws, load_rules(ws).without(column))
    say("Cleared every binning rule" if everything else f"Cleared the binning rule of {column}")


@cuts.command(name="show")
@json_option
@click.pass_context
def cuts_show(ctx: click.Context, as_json: bool) -> None:
    """Show this party's cut points and category columns.

    Example:

    \b
        vfl binning cuts show --json
    """
    from vfl_cli.bin_rules import load_rules

    rules = load_rules(workspace(ctx))
    if as_json:
        emit_json(rules.to_json())
        return
    from rich.table import Table

    table = Table(title="Binning rules of this party (local)")
    table.add_column("column")
    table.add_column("bins")
    for name, points in sorted(rules.cuts.items()):
        table.add_row(safe(name), ", ".join(f"{c:g}" for c in points))
    for name in rules.categorical:
        table.add_row(safe(name), "by category")
    print_result(table if rules else "No binning rules: every column uses the job's method.")


_scaling = [
    click.option("--base-score", type=float, default=600.0, show_default=True,
                 help="Points at the base odds."),
    click.option("--pdo", type=float, default=20.0, show_default=True,
                 help="Points to double the odds."),
    click.option("--odds", "base_odds", type=float, default=50.0, show_default=True,
                 help="Odds (non-event : event) at the base score."),
]


def _scaled(f: Any) -> Any:
    for option in reversed(_scaling):
        f = option(f)
    return f


@click.group()
def scorecard() -> None:
    """Points per bin of this party's columns, from a hetero-lr job trained on WOE columns.

    Defaults are the industry's usual scaling: 600 points at odds of 50 to 1, 20 points to
    double the odds.

    Example:

    \b
        vfl scorecard show lr1
        vfl scorecard export lr1 --out points.csv
    """


@scorecard.command(name="show")
@click.argument("job")
@_scaled
@json_option
@click.pass_context
def scorecard_show(ctx: click.Context, job: str, base_score: float, pdo: float, base_odds: float,
                   as_json: bool) -> None:
    """Show this party's points per bin (the active party also its base points).

    Example:

    \b
        vfl scorecard show lr1
        vfl scorecard show lr1 --base-score 500 --pdo 50 --odds 20 --json
    """
    from vfl_cli.scorecard import CSV_KEYS, Scaling, scorecard_of_job

    card = scorecard_of_job(workspace(ctx), job, Scaling(base_score, pdo, base_odds))
    if as_json:
        emit_json(card)
        return
    from rich.table import Table

    table = Table(title=f"Scorecard of {safe(card['party'])}, job {safe(job)}")
    for key in CSV_KEYS:
        table.add_column(key, justify="left" if key in ("column", "label") else "right")
    for row in card["table"]:
        table.add_row(*(safe(_cell(row[k])) for k in CSV_KEYS))
    print_result(table)


@scorecard.command(name="export")
@click.argument("job")
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write: CSV, or HTML when it ends in .html.")
@_scaled
@force_option
@click.pass_context
def scorecard_export(ctx: click.Context, job: str, out: Path, base_score: float, pdo: float,
                     base_odds: float, force: bool) -> None:
    """Write this party's points per bin to a CSV (or .html) file.

    Example:

    \b
        vfl scorecard export lr1 --out points.csv
        vfl scorecard export lr1 --out points.html
    """
    from vfl_cli.scorecard import Scaling, scorecard_csv, scorecard_html, scorecard_of_job

    ensure_writable(out, force=force)
    card = scorecard_of_job(workspace(ctx), job, Scaling(base_score, pdo, base_odds))
    text = scorecard_html(card) if out.suffix.lower() in (".html", ".htm") else scorecard_csv(card)
    (replace_atomic if force else write_new)(out, text.encode())
    say(f"Wrote {out}")


COMMANDS = [binning, scorecard]
