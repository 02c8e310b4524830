"""The ``predict`` job: joint scoring of aligned rows with a trained hetero linear model.

Parameters: ``model`` (the finished training job whose parts every party holds) and
``alignment`` (a finished ``psi`` job over the rows to score, possibly on new data files).

Each passive party standardises its rows with its own training statistics, computes its partial
scores ``u_j = X_j w_j`` and sends them encrypted under the active party's key (``hetero/scores``;
with several passive parties, to P1 first, which adds them up). The active party decrypts the
sum, adds its own part and keeps the scores.

What each party learns: the active party learns the scores (with one passive party, hence that
party's partial scores on these rows); and, if its data file holds the label column, the
metrics. Passive parties learn nothing: they only send.

Points (a binary model): the active party also keeps each row's total points, the joint
log-odds ``z`` mapped by the public scaling parameters (``base_score`` points at odds ``odds``
to 1 of a non-event, ``pdo`` points to double them: ``offset - factor * z``,
:class:`vfl_cli.scorecard.Scaling`). Every party keeps, locally, its own columns' points for
each row (``own_points``: ``-factor * w_j * x_j`` on its standardised columns; the active
party's intercept column holds the base points ``offset - factor * b``); with a model trained
on WOE columns these are exactly its scorecard's per-bin points of the row's bins, and summed
over every party they are the row's total. Nothing more crosses: only the encrypted partial
scores, as without points.

Written on the kit (:mod:`vfl_cli.protocol.kit`): typed states, pure steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact
from vfl_cli.models.features import aligned_rows, numeric_matrix, transform_from_arrays
from vfl_cli.models.reference import sigmoid
from vfl_cli.protocol.base import Expect, Float, JobRef, Outgoing, Param, PartyContext, need
from vfl_cli.protocol.kit import KitProtocol, PartyState, Phase, Step, finished_job, nothing
from vfl_cli.protocol.registry import get_protocol, names
from vfl_cli.protocol.wire import (
    PEER_SCORES,
    SCORES,
    collect_scores,
    expect_meta_count,
    read_enc,
    send_scores,
)
from vfl_cli.scorecard import Scaling

__all__ = ["SCORING_PARAMS", "Predict"]



@dataclass(frozen=True)
class ActiveState(PartyState):
    scores: np.ndarray | None = None  # the model's scores of the aligned rows, once decrypted
    points: np.ndarray | None = None  # binary models: each row's total points
    own_points: np.ndarray | None = None  # this party's points per row and own column


@dataclass(frozen=True)
class PassiveState(PartyState):
    own_points: np.ndarray | None = None  # binary models: own points per row and own column


@dataclass(frozen=True)
class TrainedModel:
    """This party's part of a finished training job: its protocol, columns and weights."""

    job: str
    protocol: str
    features: list[str]
    arrays: dict[str, np.ndarray]

    @property
    def task(self) -> str:
        """``binary`` (scores are probabilities) or ``regression``."""
        return str(get_protocol(self.protocol).task)  # type: ignore[attr-defined]

    def evaluate(self, y: np.ndarray, z: np.ndarray) -> dict[str, Any]:
        """The training protocol's own metrics of scores ``z`` against labels ``y``."""
        metrics: dict[str, Any] = get_protocol(self.protocol).evaluate(y, z)  # type: ignore[attr-defined]
        return metrics


def trained_model(ctx: PartyContext) -> TrainedModel:
    """The model part of the ``model`` job (a finished hetero-lr or hetero-linear job)."""
    job = ctx.params["model"]
    job_info = finished_job(ctx, job, tuple(names(predictor="predict")))
    features = list(job_info["results"]["model"]["features"])
    return TrainedModel(job, job_info["protocol"], features, ctx.job_arrays(job))


def standardised_rows(ctx: PartyContext, model: TrainedModel) -> np.ndarray:
    """This party's aligned rows as the model sees them (standardised; the active party's with
    a column of ones for the intercept)."""
    alignment = ctx.params["alignment"]
    finished_job(ctx, alignment, ("psi",))
    own = [f for f in model.features if f != "(intercept)"]
    df = aligned_rows(ctx.data(alignment), ctx.job_arrays(alignment), ctx.id_column, alignment)
    X = transform_from_arrays(model.arrays).transform(numeric_matrix(df, own, what=ctx.name))
    if ctx.is_active:
        X = np.hstack([X, np.ones((len(X), 1))])
    return np.asarray(X, dtype=float)


def partial_scores(ctx: PartyContext, model: TrainedModel) -> np.ndarray:
    """This party's share of the scores of the aligned rows: standardised X times its weights."""
    scores: np.ndarray = standardised_rows(ctx, model) @ model.arrays["weights"]
    return scores


def scaling(ctx: PartyContext) -> Scaling:
    """The job's public points scaling."""
    return Scaling(ctx.params["base_score"], ctx.params["pdo"], ctx.params["odds"])


def own_points(ctx: PartyContext, model: TrainedModel) -> np.ndarray | None:
    """This party's points of each aligned row, one column per own model column (binary models).

    Column j holds ``-factor * w_j * x_j``; the active party's last column (the intercept)
    holds the base points ``offset - factor * b``. Summed over every party: the row's points.
    """
    if model.task != "binary":
        return None
    s = scaling(ctx)
    pts = -s.factor * standardised_rows(ctx, model) * model.arrays["weights"]
    if ctx.is_active:
        pts[:, -1] += s.offset
    return np.asarray(pts, dtype=float)


def scored(ctx: PartyContext, model: TrainedModel, z: np.ndarray) -> dict[str, Any]:
    """The active party's results: row count, task and, when every row has a label, metrics."""
    results: dict[str, Any] = {"rows": len(z), "model": model.job, "task": model.task}
    label, alignment = ctx.label_column, ctx.params["alignment"]
    df = ctx.data(alignment)
    if label and label in df.columns:
        picked = aligned_rows(df, ctx.job_arrays(alignment), ctx.id_column, alignment)
        y = numeric_matrix(picked, [label], what=ctx.name)[:, 0]
        results["labelled_rows"] = int((~np.isnan(y)).sum())
        # rows to score often have no label yet (an empty cell): then no metrics, and the
        # scores are still delivered
        if results["labelled_rows"] == len(y):
            results["metrics"] = {"test": model.evaluate(y, z)}
    return results


# ----- handlers: decode -> step -> encode ------------------------------------------------------
def _active_check(ctx: PartyContext, state: ActiveState, received: Any) -> Step[ActiveState]:
    partial_scores(ctx, trained_model(ctx))  # checks model and alignment before any file
    return Step(state, "wait-scores")


def _active_score(
    ctx: PartyContext, state: ActiveState, received: Mapping[str, Artifact]
) -> Step[ActiveState]:
    model = trained_model(ctx)
    own = partial_scores(ctx, model)
    art = need(received, ctx.passives[0], SCORES)
    expect_meta_count(art, "rows", len(own))
    priv = ctx.private_key()
    z = own + priv.decrypt(read_enc(art, "u", priv.public, rows=len(own)))
    if "label_scale" in model.arrays:  # hetero-linear trained on A's standardised label
        z = model.arrays["label_mean"][0] + model.arrays["label_scale"][0] * z
    if model.task != "binary":
        return Step.finish(state.but(scores=z), scored(ctx, model, z))
    points = scaling(ctx).score(z)
    results = dict(scored(ctx, model, z), points=_summary(points))
    return Step.finish(state.but(scores=sigmoid(z), points=points,
                                 own_points=own_points(ctx, model)), results)


def _summary(points: np.ndarray) -> dict[str, float]:
    """The points of the scored rows in a few figures (the active party's results)."""
    q = np.percentile(points, [5, 50, 95]) if len(points) else [float("nan")] * 3
    return {"mean": float(np.mean(points)) if len(points) else float("nan"),
            "p5": float(q[0]), "median": float(q[1]), "p95": float(q[2])}


def _passive_send(ctx: PartyContext, state: PassiveState, received: Any) -> Step[PassiveState]:
    model = trained_model(ctx)
    u = partial_scores(ctx, model)  # checks model and alignment on every party
    state = state.but(own_points=own_points(ctx, model))  # local: never sent
    out = send_scores(ctx, u, 0)
    if out is None:  # P1 with other passive parties: it adds theirs first
        return Step(state, "collect-scores")
    return Step.finish(state, {"rows": len(u)}, out)


def _passive_collect(
    ctx: PartyContext, state: PassiveState, received: Mapping[str, Artifact]
) -> Step[PassiveState]:
    out: list[Outgoing] = collect_scores(ctx, partial_scores(ctx, trained_model(ctx)), received, 0)
    return Step.finish(state, {"rows": int(out[0].meta["rows"])}, out)


def _scores_from_p1(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(ctx.passives[0], SCORES)]


def _scores_from_peers(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(p, PEER_SCORES) for p in ctx.passives if p != ctx.name]


#: The parameters every predictor takes after its ``model``: the rows and the points scaling.
SCORING_PARAMS: dict[str, Param] = {
    "alignment": JobRef(note="the psi job over the rows to score"),
    "base_score": Float(600.0, -1e6, 1e6, note="points at the base odds (binary models)"),
    "pdo": Float(20.0, 0.0, 1e4, open_low=True, note="points to double the odds"),
    "odds": Float(50.0, 0.0, 1e9, open_low=True,
                  note="odds of a non-event to an event at the base score"),
}


class Predict(KitProtocol[Any]):
    name = "predict"
    states = {"active": ActiveState, "passive": PassiveState}
    params_spec = {"model": JobRef(note="the finished training job"), **SCORING_PARAMS}

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _active_check),
            ("active", "wait-scores"): Phase(_scores_from_p1, _active_score),
            ("passive", "start"): Phase(nothing, _passive_send),
            ("passive", "collect-scores"): Phase(_scores_from_peers, _passive_collect),
        }
