"""``vfl hfl``: multi-node training (parameter server, workers, predictors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vfl_cli import jobs as engine
from vfl_cli.artifacts.io import ensure_writable
from vfl_cli.cli._console import emit_json, progress_bars, say, status_console
from vfl_cli.cli._options import force_option, json_option, out_option, workspace
from vfl_cli.cli.jobs import parse_params, report
from vfl_cli.errors import VflError


@click.group()
def hfl() -> None:
    """Multi-node training: the server's master model, workers' delta updates, predictors.

    The server proposes the job with 'vfl hfl start'; workers and predictors accept it with
    'vfl job accept' and then run the generic 'vfl step' each time files arrive, until done.

    Example:

    \b
        server$    vfl hfl start --rounds 20 --weighting actor-critic
        node0$     vfl job accept && vfl step      (each time files arrive)
        predictor$ vfl job accept && vfl step      (each time an update arrives)
        predictor$ vfl hfl predict <job> --data new.csv --out scores.csv
    """


@hfl.command()
@click.option("--rounds", type=int, help="Aggregation rounds (default 10).")
@click.option("--weighting", type=click.Choice(["fedavg", "actor-critic"]),
              help="How the server weights the nodes' deltas (default fedavg).")
@click.option("--model", type=click.Choice(["logistic", "mlp"]), help="Model (default logistic).")
@click.option("--hidden", type=int, multiple=True, help="MLP hidden layer size (repeat per layer; default 16).")
@click.option("--local-epochs", type=int, help="Epochs each worker trains per round (default 1).")
@click.option("--batch-size", type=int, help="Workers' mini-batch size; 0 = full batch (default 32).")
@click.option("--learning-rate", type=float, help="Workers' SGD step size (default 0.1).")
@click.option("--test-fraction", type=float,
              help="Share of the server's rows kept for test metrics; the rest validate (default 0.5).")
@click.option("--seed", type=int, help="Seed of the server's split, the initial model and local training (default 42).")
@click.option("--realtime-k", type=float, help="Share of weights in a real-time update (default 0.1).")
@click.option("--full-every", type=int, help="Rounds between full updates to predictors (default 5).")
@click.option("--secure-aggregation/--no-secure-aggregation", default=None,
              help="Workers encrypt deltas under the first worker's key; the server learns only their weighted sum "
                   "(default: on).")
@click.option("--param", "params", multiple=True,
              help="Any other parameter key=value "
                   "(server_learning_rate, min_nodes, dp_clip, dp_noise_multiplier, dp_delta).")
@click.option("--with", "peers", multiple=True, help="Worker or predictor (repeat; default: all trusted peers).")
@click.option("--job", "job_id", help="Job id (default: hfl-<date>-<random>).")
@json_option
@click.pass_context
def start(ctx: click.Context, /, hidden: tuple[int, ...], params: tuple[str, ...], peers: tuple[str, ...],
          job_id: str | None, as_json: bool, **options: Any) -> None:
    """Server: propose a multi-node training job and send round 0's model to the workers.

    Workers are trained in the order of --with (the first holds the secure-aggregation key).

    Example:

    \b
        vfl hfl start --rounds 20 --weighting actor-critic --model mlp --hidden 16
        vfl hfl start --param dp_clip=0.5 --param dp_noise_multiplier=1.0
    """
    ws = workspace(ctx)
    values = {k: v for k, v in options.items() if v is not None}
    if hidden:
        values["hidden"] = list(hidden)
    values.update(parse_params(params))
    with progress_bars() as progress:
        r = engine.start_job(ws, "hfl", values, peers=list(peers) or None, job=job_id, progress=progress)
    report([r], as_json, ws.name)


def _hfl_job(ctx: click.Context, job_id: str) -> tuple[Any, dict[str, Any], Any]:
    ws = workspace(ctx)
    info = engine.load_info(ws, job_id)
    if info["protocol"] != "hfl":
        raise VflError(f"job {job_id} is a {info['protocol']} job, not an hfl job")
    state, _ = engine.load_state(ws, job_id)
    return ws, info, state


@hfl.command()
@click.argument("job_id")
@json_option
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Where this party stands in an hfl job: round, update version, last weights, metrics.

    Example:

    \b
        vfl hfl status hfl-20261122-3f2a9c --json
    """
    from vfl_cli.protocol.hfl import status as hfl_status

    ws, info, state = _hfl_job(ctx, job_id)
    out = hfl_status(ws.role, info["params"], state)
    if as_json:
        emit_json(out)
        return
    for key, value in out.items():
        status_console().print(f"{key}: {value}", markup=False, highlight=False)


@hfl.command()
@click.argument("job_id")
@click.option("--data", "data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of rows to score (default: this party's data file).")
@out_option("CSV file for the ids and their scores.")
@force_option
@click.pass_context
def predict(ctx: click.Context, job_id: str, data: Path | None, out: Path, force: bool) -> None:
    """Score rows with this party's copy of the model: a predictor's replica, the server's master.

    A predictor can serve while the job runs: it scores with the updates applied so far.

    Example:

    \b
        vfl hfl predict hfl-20261122-3f2a9c --data new_rows.csv --out scores.csv
    """
    import pandas as pd

    from vfl_cli.protocol.hfl import predict_rows

    ensure_writable(out, force=force)
    ws, _, state = _hfl_job(ctx, job_id)
    rows = ws.read_data(data)
    scores = predict_rows(ws.role, state, rows)
    pd.DataFrame({"id": rows[ws.config["id_column"]], "score": scores}).to_csv(out, index=False)
    say(f"Wrote {len(scores)} scores to {out}")


@hfl.command(name="show-weights")
@click.argument("job_id")
@json_option
@click.pass_context
def show_weights(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Server: the weight each node got in each round so far (FedAvg or Actor-Critic).

    Example:

    \b
        vfl hfl show-weights hfl-20261122-3f2a9c --json
    """
    from rich.table import Table

    from vfl_cli.protocol.hfl import node_weights

    ws, _, state = _hfl_job(ctx, job_id)
    if ws.role != "server":
        raise VflError(f"{ws.name} is a {ws.role}: only the server weights the nodes")
    shown = node_weights(state)
    nodes, weights = shown["nodes"], shown["node_weights"]
    if as_json:
        emit_json(shown)
        return
    table = Table(title=f"node weights, job {job_id}")
    table.add_column("round", justify="right")
    for node in nodes:
        table.add_column(node, justify="right")
    for t, row in enumerate(weights, 1):
        table.add_row(str(t), *(f"{w:.3f}" for w in row))
    status_console().print(table)


COMMANDS = [hfl]
