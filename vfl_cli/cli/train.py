"""``vfl train``, ``vfl evaluate``, ``vfl predict`` and ``vfl model``: training jobs and their models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vfl_cli import jobs as engine
from vfl_cli.artifacts.io import ensure_writable, pretty_json, replace_atomic, write_new
from vfl_cli.cli._console import emit_json, print_result, progress_bars, say
from vfl_cli.cli._options import force_option, json_option, out_option, workspace
from vfl_cli.cli.jobs import parse_params, report
from vfl_cli.errors import VflError
from vfl_cli.protocol.registry import info as protocol_info
from vfl_cli.protocol.registry import model_table, names


@click.group()
def train() -> None:
    """Train a model on aligned rows with Paillier-encrypted rounds.

    Example:

    \b
        bank$   vfl train start --protocol hetero-lr --alignment align-2026-11 --epochs 10
        bureau$ vfl job accept
        both$   vfl step      (each time new files arrive, until done)
    """


@train.command()
@click.option("--protocol", "-p", type=click.Choice(names(trains=True)), required=True,
              help="hetero-lr: binary logistic regression; hetero-linear: linear regression.")
@click.option("--alignment", required=True, help="The finished alignment (psi) job whose rows to train on.")
@click.option("--epochs", type=int, help="Passes over the training rows (default 10).")
@click.option("--batch-size", type=int, help="Rows per mini-batch, at least 64 and 4 per column of the widest party; "
              "0 = full batch, fewest hand-offs (default 0).")
@click.option("--learning-rate", type=float, help="Step size (default 0.05).")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), help="Optimiser (default adam).")
@click.option("--l2", type=float, help="L2 penalty (default 0).")
@click.option("--test-fraction", type=float, help="Share of aligned rows held out for evaluation (default 0.2).")
@click.option("--seed", type=int, help="Seed of the split and mini-batch order (default 42).")
@click.option("--param", "params", multiple=True, help="Any other parameter key=value (l1, momentum, "
              "schedule, decay, early_stopping_patience, early_stopping_tol, loss_sample, loss_every, "
              "approximation=centred|taylor, whiten=true).")
@click.option("--with", "peers", multiple=True, help="Passive party (repeat; default: all trusted).")
@click.option("--job", "job_id", help="Job id (default: <protocol>-<date>-<random>).")
@click.option("--exclude", "exclude", multiple=True, metavar="COLUMN",
              help="Leave this column of your own file out of this job (repeat).")
@click.option("--features", "features", metavar="A,B,...",
              help="Use only these columns of your own file in this job (comma-separated).")
@click.option("--encode", "encode", multiple=True, metavar="COLUMN=KIND",
              help="Encode a text column of your own file in this job: onehot, ordinal or frequency, "
              "fitted on your training rows (repeat).")
@json_option
@click.pass_context
def start(ctx: click.Context, /, protocol: str, alignment: str, params: tuple[str, ...], peers: tuple[str, ...],
          job_id: str | None, exclude: tuple[str, ...], features: str | None, encode: tuple[str, ...],
          as_json: bool, **options: Any) -> None:
    """Active party: propose a training job on the rows of a finished alignment.

    The job uses the columns of your data file as they are now (see 'vfl columns'), less
    --exclude, or only --features; each passive party chooses its own columns the same way.
    A text column is left out, or encoded with --encode (or 'vfl columns --encode'); the
    encoders are fitted on your own training rows and kept with the job, for prediction. The
    column names and categories stay with you: they are not part of the proposal.

    Example:

    \b
        vfl train start --protocol hetero-lr --alignment align-2026-11 --epochs 10 --batch-size 0
        vfl train start --protocol hetero-lr --alignment align-2026-11 --exclude region
        vfl train start --protocol hetero-lr --alignment align-2026-11 --encode region=onehot
    """
    from vfl_cli.cli.workspace import _names
    from vfl_cli.columns import imputed_line, job_features, parse_encodings

    ws = workspace(ctx)
    values = {k: v for k, v in options.items() if v is not None}
    values.update(parse_params(params))
    values["alignment"] = alignment
    chosen = job_features(ws.config, exclude=list(exclude), features=_names(features))
    encodings = {**(ws.config.get("encode") or {}), **parse_encodings(encode)}
    with progress_bars() as progress:
        r = engine.start_job(ws, protocol, values, peers=list(peers) or None, job=job_id, features=chosen,
                             encodings=encodings, progress=progress)
    note = imputed_line(engine.load_info(ws, r.job))
    if note:
        say(f"Note: {note}")
    report([r], as_json, ws.name)


def _finished(ctx: click.Context, job_id: str) -> tuple[Any, dict[str, Any], Any]:
    ws = workspace(ctx)
    info = engine.load_info(ws, job_id)
    state, _ = engine.load_state(ws, job_id)
    if not state.done:
        raise VflError(f"job {job_id} is not finished (phase {state.phase}); run 'vfl step' as files arrive")
    return ws, info, state


@click.command()
@click.argument("job_id")
@json_option
@click.pass_context
def evaluate(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show the metrics of a finished training job (its test split) or predict job (labelled rows).

    Only the active party has metrics: it alone holds the labels.

    Example:

    \b
        vfl evaluate hetero-lr-20261122-3f2a9c --json
    """
    from rich.table import Table

    ws, info, state = _finished(ctx, job_id)
    metrics = state.results.get("metrics")
    if not metrics:
        raise VflError(
            f"{ws.name} has no metrics for job {job_id}: only the active party, which holds the labels, has them"
            if ws.role == "passive" else f"job {job_id} computed no metrics (no test rows or no labels)"
        )
    if as_json:
        emit_json(metrics)
        return
    table = Table(title=f"{info['protocol']} job {job_id}")
    table.add_column("split")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for split, values in metrics.items():
        for k, v in values.items():
            table.add_row(split, k, f"{v:.4f}" if isinstance(v, float) else str(v))
    print_result(table)


@click.group()
def predict() -> None:
    """Score aligned rows jointly with a trained model; only the active party sees the scores.

    Example:

    \b
        bank$   vfl align start --with bureau --data new_customers.csv --job new-rows
        ...     (finish the alignment)
        bank$   vfl predict start --model hetero-lr-20261122-3f2a9c --alignment new-rows
        bureau$ vfl job accept
        bank$   vfl step && vfl predict export <job> --out scores.csv
    """


def predictor_of(ws: Any, model: str) -> str:
    """The protocol that scores rows with the model of job ``model`` (its registry entry)."""
    trained = engine.load_info(ws, model)["protocol"]
    predictor = protocol_info(trained).predictor
    if predictor is None:
        raise VflError(f"job {model} is a {trained} job, whose models cannot score rows; name a "
                       "finished training job (vfl job list)")
    return predictor


@predict.command(name="start")
@click.option("--model", required=True, help="The finished training job whose model to use.")
@click.option("--alignment", required=True, help="The finished alignment job of the rows to score.")
@click.option("--job", "job_id", help="Job id (default: predict-<date>-<random>).")
@click.option("--base-score", type=float, default=600.0, show_default=True,
              help="Points at the base odds (binary models: each row's score also in points).")
@click.option("--pdo", type=float, default=20.0, show_default=True, help="Points to double the odds.")
@click.option("--odds", "base_odds", type=float, default=50.0, show_default=True,
              help="Odds of a non-event to an event at the base score.")
@json_option
@click.pass_context
def predict_start(ctx: click.Context, model: str, alignment: str, job_id: str | None, base_score: float,
                  pdo: float, base_odds: float, as_json: bool) -> None:
    """Active party: propose scoring the rows of ALIGNMENT with MODEL.

    The job's protocol is the one that scores MODEL's kind of model (linear models: predict;
    SecureBoost: secureboost-predict, each party routing the rows through its own splits;
    split-nn: split-nn-predict, the forward pass of training with the shares of W_P).
    With a binary model each row also gets points: its log-odds mapped to a score of
    --base-score at --odds to 1, --pdo points to double the odds (a scorecard's scale).

    Example:

    \b
        vfl predict start --model hetero-lr-20261122-3f2a9c --alignment new-rows
    """
    ws = workspace(ctx)
    params = {"model": model, "alignment": alignment, "base_score": base_score, "pdo": pdo, "odds": base_odds}
    r = engine.start_job(ws, predictor_of(ws, model), params, job=job_id)
    report([r], as_json, ws.name)


@predict.command(name="export")
@click.argument("job_id")
@out_option("CSV file for the ids and their scores.")
@click.option("--unscored", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the ids of the rows that were not scored (not held by every party) to this CSV.")
@click.option("--own-points", is_flag=True,
              help="Any party: write this party's own points per scored row and own column instead "
                   "(binary models; kept locally, never sent).")
@force_option
@click.pass_context
def predict_export(ctx: click.Context, job_id: str, out: Path, unscored: Path | None, own_points: bool,
                   force: bool) -> None:
    """Active party: write the scores of a finished predict job as CSV (id, score, and points for a
    binary model).

    Only rows every party holds (the alignment's intersection) are scored; the command says how
    many of this party's rows that is, and --unscored lists the others. With --own-points any
    party writes its own columns' points of each row (with a model on WOE columns: its
    scorecard's points of the row's bins; the active party's include the base points).

    Example:

    \b
        vfl predict export predict-20261122-77aa01 --out scores.csv --unscored unscored.csv
        vfl predict export predict-20261122-77aa01 --out my-points.csv --own-points
    """
    from vfl_cli.id_report import scored_and_unscored

    ensure_writable(out, force=force)
    if unscored is not None:
        ensure_writable(unscored, force=force)
    ws, info, state = _finished(ctx, job_id)
    if own_points:
        _export_own_points(ws, info, state, out)
        return
    if "scores" not in state.arrays:
        raise VflError(f"{ws.name} holds no scores for job {job_id}: only the active party receives them")
    scores, missing, total = scored_and_unscored(ws, info["params"]["alignment"], state.arrays["scores"])
    if "points" in state.arrays:
        scores["points"] = state.arrays["points"]
    scores.to_csv(out, index=False)
    say(f"Wrote {len(scores)} scores to {out}: {len(scores)} of this party's {total} rows were scored")
    if unscored is not None:
        missing.to_csv(unscored, index=False)
        say(f"Wrote the {len(missing)} unscored ids to {unscored}")
    elif len(missing):
        say(f"{len(missing)} rows were not scored (their ids are not held by every party); "
            "list them with --unscored FILE")


def _export_own_points(ws: Any, info: dict[str, Any], state: Any, out: Path) -> None:
    """This party's points per scored row and own column, with their sum, as CSV."""
    from vfl_cli.id_report import scored_and_unscored

    if "own_points" not in state.arrays:
        raise VflError(f"job {info['job']} holds no points of {ws.name}'s columns: points are kept for "
                       "binary models (hetero-lr) only")
    pts = state.arrays["own_points"]
    card = engine.load_state(ws, info["params"]["model"])[0].results["model"]
    names = ["(base points)" if f == "(intercept)" else f for f in card["features"]]
    table, _, _ = scored_and_unscored(ws, info["params"]["alignment"], pts.sum(axis=1))
    table = table.rename(columns={"score": "own_points"})
    for j, name in enumerate(names):
        table[name] = pts[:, j]
    table.to_csv(out, index=False)
    say(f"Wrote {ws.name}'s own points of {len(table)} rows ({len(names)} columns) to {out}")


@click.group()
def model() -> None:
    """Show or export this party's part of a trained model.

    Example:

    \b
        vfl model show hetero-lr-20261122-3f2a9c
    """


@model.command(name="show")
@click.argument("job_id")
@json_option
@click.pass_context
def model_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show this party's model card: protocol, parameters, its features and weights, metrics.

    Example:

    \b
        vfl model show hetero-lr-20261122-3f2a9c --json
    """
    from rich.table import Table

    ws, info, state = _finished(ctx, job_id)
    card = state.results.get("model")
    if card is None:
        raise VflError(f"job {job_id} is a {info['protocol']} job and holds no model")
    if as_json:
        emit_json(dict(card, metrics=state.results.get("metrics", {})))
        return
    trained = []
    if card.get("alignment"):
        trained.append(f"trained on alignment {card['alignment']}")
    if card.get("epochs_run") is not None:
        trained.append(f"{card['epochs_run']} epochs")
    if card.get("validation"):
        val = card["validation"]
        how = ("the last checked on" if val.get("keep") == "last" else "best on")  # older cards: best
        trained.append(f"kept the model of epoch {int(val['kept_epoch']) + 1}, {how} {val['rows']} validation rows")
    if card.get("rounds_run") is not None:
        trained.append(f"{card['rounds_run']} rounds")
    print_result(f"[bold]{card['protocol']}[/bold] model of job {job_id}, {ws.name}'s part"
                  + (f" ({', '.join(trained)})" if trained else ""))
    rendered = model_table(info["protocol"], card)
    table = Table()
    for col in rendered.columns:
        table.add_column(col, justify="right" if col == "weight" else "left")
    for row in rendered.rows:
        table.add_row(*row)
    print_result(table)


@model.command(name="export")
@click.argument("job_id")
@out_option("JSON file for this party's model part and card.")
@force_option
@click.pass_context
def model_export(ctx: click.Context, job_id: str, out: Path, force: bool) -> None:
    """Write this party's model part (weights, standardisation, card) as JSON; never other parties'.

    Example:

    \b
        vfl model export hetero-lr-20261122-3f2a9c --out bank-model.json
    """
    ensure_writable(out, force=force)
    ws, info, state = _finished(ctx, job_id)
    card = state.results.get("model")
    if card is None:
        raise VflError(f"job {job_id} is a {info['protocol']} job and holds no model")
    doc = dict(card, metrics=state.results.get("metrics", {}))
    if protocol_info(info["protocol"]).export_standardiser:
        doc["standardiser"] = {"mean": state.arrays["mean"].tolist(), "scale": state.arrays["scale"].tolist()}
    (replace_atomic if force else write_new)(out, pretty_json(doc))
    say(f"Wrote {ws.name}'s model part to {out}")


COMMANDS = [train, evaluate, predict, model]
