"""``vfl stats``: a party's statistics of its own columns, computed locally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vfl_cli.artifacts.io import ensure_writable, replace_atomic, write_new
from vfl_cli.cli._console import emit_json, print_result, safe, say
from vfl_cli.cli._options import force_option, json_option, workspace
from vfl_cli.errors import DataError
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
    """Statistics of this party's columns, locally; and with its peers (vfl stats joint).

    'show' and 'psi' compute on this party's own data alone and send nothing; 'joint' runs a
    joint-stats job with the other parties.

    Example:

    \b
        vfl stats show
        vfl stats psi --score applicants_2025.csv
        vfl stats joint start --alignment al1
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
    from vfl_cli.stats import QUANTILE_KEYS, summaries_csv, summarise  # pandas: only for stats

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
    from vfl_cli.stats import PSI_SHIFT, PSI_STABLE, population_stability

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


# ----- vfl stats joint: the joint-stats job ------------------------------------------------------
@stats.group()
def joint() -> None:
    """Statistics that need both sides: Pearson correlation between the parties' columns and
    the label rate per passive bin (a joint-stats job; docs/protocols/joint-stats.md).

    Example:

    \b
        bank$   vfl stats joint start --alignment al1 --pearson all --reveal-to both
        bureau$ vfl step            # then bank$ vfl step, bureau$ vfl step
        bank$   vfl stats joint show js1
    """


def _numbers(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise DataError(f"{what} is 'all' or a comma-separated list, not {text!r}")
    return items


@joint.command(name="start")
@click.option("--alignment", required=True, metavar="JOB", help="The finished psi job whose rows to use.")
@click.option("--with", "peers", multiple=True, help="Passive party (repeat; default: every trusted peer).")
@click.option("--job", "job_id", help="Job id (default: joint-stats-<date>-<random>).")
@click.option("--pearson", default="all", show_default=True, metavar="all|none|COLS",
              help="This party's columns to correlate with the passive parties' (comma-separated).")
@click.option("--peer-columns", default="all", show_default=True, metavar="all|N,N",
              help="The passive parties' columns to correlate, by number (1 = a party's first "
              "feature column, as its 'vfl stats show' lists them).")
@click.option("--reveal-to", type=click.Choice(["active", "passive", "both"]), default="active",
              show_default=True, help="Who learns the correlations between the parties' columns.")
@click.option("--label-rate/--no-label-rate", default=True, show_default=True,
              help="Give each passive party the label rate of each of its bins.")
@click.option("--bins", type=int, default=10, show_default=True,
              help="Bins per passive column for the label rate (3 to 256, the missing bin included).")
@click.option("--method", type=click.Choice(["quantile", "equal-width"]), default="quantile",
              show_default=True, help="How the passive parties bin their numeric columns.")
@click.option("--min-bin-rows", type=int, default=10, show_default=True,
              help="A passive bin with fewer rows gets no label rate (its labels stay hidden).")
@click.option("--test-fraction", type=float, default=0.2, show_default=True,
              help="Rows left out, as a training job with the same seed leaves them out.")
@click.option("--seed", type=int, default=42, show_default=True, help="Public seed of the split.")
@json_option
@click.pass_context
def joint_start(ctx: click.Context, alignment: str, peers: tuple[str, ...], job_id: str | None,
                pearson: str, peer_columns: str, reveal_to: str, label_rate: bool, bins: int,
                method: str, min_bin_rows: int, test_fraction: float, seed: int,
                as_json: bool) -> None:
    """Active party: propose a joint-stats job and send the encrypted columns and labels.

    Correlations are computed on the aligned training rows, over each party's standardised
    columns (a missing cell counts as the column's mean). Columns are named by number in the
    job, so no party's column names reach another party.

    Example:

    \b
        vfl stats joint start --alignment al1
        vfl stats joint start --alignment al1 --pearson income,age --peer-columns 1,3 --reveal-to both
        vfl stats joint start --alignment al1 --pearson none --bins 20 --min-bin-rows 50
    """
    from vfl_cli import jobs as engine
    from vfl_cli.cli._console import progress_bars
    from vfl_cli.cli.jobs import report
    from vfl_cli.columns import job_columns
    from vfl_cli.stats import joint_column_numbers

    ws = workspace(ctx)
    params: dict[str, Any] = {"alignment": alignment, "pearson": pearson.strip() != "none",
                              "reveal_to": reveal_to, "label_rate": label_rate, "bins": bins,
                              "method": method, "min_bin_rows": min_bin_rows,
                              "test_fraction": test_fraction, "seed": seed}
    if pearson.strip() not in ("all", "none"):
        features = job_columns(ws, "joint-stats", params)["features"]
        params["active_columns"] = joint_column_numbers(
            features, _numbers(pearson, "--pearson"), ws.read_data(), party=ws.name)
    if peer_columns.strip() != "all":
        try:
            params["passive_columns"] = [int(n) for n in _numbers(peer_columns, "--peer-columns")]
        except ValueError:
            raise DataError(f"--peer-columns is 'all' or column numbers from 1 (1,3,4), not "
                            f"{peer_columns!r}") from None
    with progress_bars() as progress:
        r = engine.start_job(ws, "joint-stats", params, peers=list(peers) or None, job=job_id,
                             progress=progress)
    report([r], as_json, ws.name)


def _matrix(title: str, rows: list[str], cols: list[str], values: list[list[float]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for c in cols:
        table.add_column(safe(c), justify="right")
    for name, line in zip(rows, values, strict=True):
        table.add_row(safe(name), *(f"{v:+.4f}" for v in line))
    return table


@joint.command(name="show")
@click.argument("job")
@json_option
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT",
              help="Also write one line per correlation and per bin to this CSV file.")
@force_option
@click.pass_context
def joint_show(ctx: click.Context, job: str, as_json: bool, csv_out: Path | None,
               force: bool) -> None:
    """Show this party's results of joint-stats JOB: correlations and label rates.

    Correlations between this party's own columns were computed locally; those with a peer's
    columns are shown only if the job revealed them to this party (peer columns by number).
    A passive party sees the label rate of each of its bins (none for a bin of fewer than
    min_bin_rows rows); the active party only how many bins got one.

    Example:

    \b
        vfl stats joint show js1
        vfl stats joint show js1 --json
        vfl stats joint show js1 --csv joint.csv
    """
    from vfl_cli.stats import joint_csv, joint_result

    ws = workspace(ctx)
    if csv_out is not None:
        ensure_writable(csv_out, force=force)
    result = joint_result(ws, job)
    if csv_out is not None:
        (replace_atomic if force else write_new)(csv_out, joint_csv(result).encode())
        say(f"Wrote {csv_out}")
    if as_json:
        emit_json(result)
        return
    out: list[Any] = []
    if result["columns"]:
        out.append(_matrix(f"Pearson, {safe(ws.name)} (local)", result["columns"],
                           result["columns"], result["within"]))
    for peer, entry in result.get("pearson", {}).items():
        if entry["r"] is None:
            say(f"The correlations with {peer}'s columns were revealed to {peer} only.")
            continue
        out.append(_matrix(f"Pearson, {safe(ws.name)} x {safe(peer)}",
                           entry["mine"], [f"{peer}#{n}" for n in entry["theirs"]], entry["r"]))
    out.extend(_rates(result))
    say(f"{result['rows']} training rows")
    if out:
        print_result(*out)


def _rates(result: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    rates = result.get("label_rate")
    if isinstance(rates, dict):  # the active party: per passive party, how many bins
        for peer, n in rates.items():
            say(f"{peer}: label rates for {n['bins'] - n['withheld']} of its {n['bins']} bins "
                f"({n['columns']} columns; {n['withheld']} withheld as too small)")
        return []
    if not rates:
        return []
    table = Table(title="Label rate per bin")
    for key in ("column", "bin", "label", "rows", "events", "rate"):
        table.add_column(key, justify="left" if key in ("column", "label") else "right")
    for r in rates:
        rate = "withheld" if r["events"] is None and r["rows"] else (
            "" if r["rate"] is None else f"{r['rate']:.4f}")
        table.add_row(safe(r["column"]), str(r["bin"]), safe(r["label"]), str(r["rows"]),
                      "" if r["events"] is None else str(r["events"]), rate)
    return [table]


COMMANDS = [stats]
