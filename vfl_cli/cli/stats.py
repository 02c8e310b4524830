"""``vfl stats``: a party's statistics of its own columns, computed locally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vfl_cli.artifacts.io import ensure_writable, replace_atomic, write_new
from vfl_cli.cli._console import emit_json, print_result, safe, say
from vfl_cli.cli._options import force_option, json_option, workspace
from vfl_cli.errors import DataError
from vfl_cli.stats import (
    PSI_SHIFT,
    PSI_STABLE,
    QUANTILE_KEYS,
    population_stability,
    summaries_csv,
    summarise,
)
from vfl_cli.workspace import Workspace

_file = click.Path(exists=True, dir_okay=False, path_type=Path)
column_option = click.option("--column", "columns", multiple=True, metavar="NAME",
                             help="Only this column (repeat for several; default: every feature).")


def _columns(ws: Workspace, path: Path | None, chosen: tuple[str, ...], *,
             label: bool) -> list[str]:
    from vfl_cli.columns import feature_columns

    columns = feature_columns(ws.config, path)
    if label and ws.label_column:
        columns.append(ws.label_column)
    for name in chosen:
        if name not in columns:
            raise DataError(f"{name!r} is not a column of {path or ws.config['data']} this party "
                            f"uses; its columns are: {', '.join(columns[:12])}")
    return list(chosen) or columns


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(f"{t['value']} ({t['count']})" for t in value)
    return str(value)


@click.group()
def stats() -> None:
    """Statistics of this party's own columns, computed locally (nothing is sent).

    Example:

    \b
        vfl stats show
        vfl stats psi --score applicants_2025.csv
    """


@stats.command()
@click.option("--data", "data", type=_file,
              help="Another data file of this party, in the same format (default: its data file).")
@column_option
@json_option
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT",
              help="Also write the summaries to this CSV file.")
@force_option
@click.pass_context
def show(ctx: click.Context, data: Path | None, columns: tuple[str, ...], as_json: bool,
         csv_out: Path | None, force: bool) -> None:
    """Summarise each column: count, missing, mean, std, min, quantiles, max, distinct values.

    Quantiles are the 1st, 25th, 50th, 75th and 99th percentiles; text columns show their
    most frequent categories instead. The active party's label column is included (its mean is
    the share of label 1).

    Example:

    \b
        vfl stats show
        vfl stats show --column age --column income --json
        vfl stats show --data applicants_2025.csv --csv summary.csv
    """
    ws = workspace(ctx)
    if csv_out is not None:
        ensure_writable(csv_out, force=force)
    names = _columns(ws, data, columns, label=True)
    summaries = summarise(ws.read_data(data), names, what=str(data or ws.config["data"]))
    if csv_out is not None:
        (replace_atomic if force else write_new)(csv_out, summaries_csv(summaries).encode())
        say(f"Wrote {csv_out}")
    if as_json:
        emit_json(summaries)
        return
    from rich.table import Table

    keys = ["column", "kind", "count", "missing", "mean", "std", "min", *QUANTILE_KEYS, "max",
            "distinct"] + (["top"] if any(s["top"] for s in summaries) else [])
    table = Table(title=f"Columns of {safe(ws.name)} ({len(summaries)})")
    for key in keys:
        table.add_column(key, justify="left" if key in ("column", "kind", "top") else "right")
    for s in summaries:
        table.add_row(*(safe(_cell(s[k])) for k in keys))
    print_result(table)


@stats.command()
@click.option("--train", "train", type=_file,
              help="The data the model was trained on (default: this party's data file).")
@click.option("--score", "score", type=_file, required=True,
              help="The data to be scored, in the same format.")
@click.option("--bins", type=int, default=10, show_default=True,
              help="Quantile bins of a numeric column (2 to 100), plus one for missing values.")
@column_option
@json_option
@click.pass_context
def psi(ctx: click.Context, train: Path | None, score: Path, bins: int, columns: tuple[str, ...],
        as_json: bool) -> None:
    """Population stability index of each column, training data against scoring data.

    Bins come from the training data (quantiles; categories for text columns; missing values
    in a bin of their own). Reading: below 0.1 stable, 0.1 to 0.25 watch, above 0.25 shift.

    Example:

    \b
        vfl stats psi --score applicants_2025.csv
        vfl stats psi --train bank_2023.csv --score bank_2025.csv --bins 20 --json
    """
    ws = workspace(ctx)
    names = _columns(ws, train, columns, label=False)
    train_name = str(train or ws.config["data"])
    rows = population_stability(ws.read_data(train), ws.read_data(score), names, bins=bins,
                                names=(train_name, str(score)))
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"Population stability, {safe(Path(train_name).name)} -> "
                        f"{safe(score.name)}")
    for key in ("column", "kind", "PSI", "reading"):
        table.add_column(key, justify="right" if key == "PSI" else "left")
    for r in rows:
        table.add_row(safe(r["column"]), r["kind"], f"{r['psi']:.4f}", r["reading"])
    print_result(table)
    shifted = sum(r["reading"] == "shift" for r in rows)
    watch = sum(r["reading"] == "watch" for r in rows)
    say(f"{shifted} of {len(rows)} columns shifted (PSI > {PSI_SHIFT}), {watch} to watch "
        f"({PSI_STABLE} to {PSI_SHIFT})")


COMMANDS = [stats]
