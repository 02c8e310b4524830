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
from vfl_cli.protocol.base import Expect, JobRef, Outgoing, PartyContext, need
from vfl_cli.protocol.kit import KitProtocol, PartyState, Phase, Step, finished_job, nothing
from vfl_cli.protocol.registry import get_protocol, names
from vfl_cli.protocol.wire import PEER_SCORES, SCORES, collect_scores, read_enc, send_scores

__all__ = ["Predict"]



@dataclass(frozen=True)
class ActiveState(PartyState):
    scores: np.ndarray | None = None  # the model's scores of the aligned rows, once decrypted


@dataclass(frozen=True)
class PassiveState(PartyState):
    pass


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
    job_info = finished_job(ctx, job, tuple(names(predicts=True)))
    features = list(job_info["results"]["model"]["features"])
    return TrainedModel(job, job_info["protocol"], features, ctx.job_arrays(job))


def partial_scores(ctx: PartyContext, model: TrainedModel) -> np.ndarray:
    """This party's share of the scores of the aligned rows: standardised X times its weights."""
    alignment = ctx.params["alignment"]
    finished_job(ctx, alignment, ("psi",))
    own = [f for f in model.features if f != "(intercept)"]
    df = aligned_rows(ctx.data(alignment), ctx.job_arrays(alignment), ctx.id_column, alignment)
    X = transform_from_arrays(model.arrays).transform(numeric_matrix(df, own, what=ctx.name))
    if ctx.is_active:
        X = np.hstack([X, np.ones((len(X), 1))])
    scores: np.ndarray = X @ model.arrays["weights"]
    return scores


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
    priv = ctx.private_key()
    z = own + priv.decrypt(read_enc(art, "u", priv.public, rows=len(own)))
    if "label_scale" in model.arrays:  # hetero-linear trained on A's standardised label
        z = model.arrays["label_mean"][0] + model.arrays["label_scale"][0] * z
    scores = sigmoid(z) if model.task == "binary" else z
    return Step.finish(state.but(scores=scores), scored(ctx, model, z))


def _passive_send(ctx: PartyContext, state: PassiveState, received: Any) -> Step[PassiveState]:
    u = partial_scores(ctx, trained_model(ctx))  # checks model and alignment on every party
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


class Predict(KitProtocol[Any]):
    name = "predict"
    states = {"active": ActiveState, "passive": PassiveState}
    params_spec = {
        "model": JobRef(note="the finished training job"),
        "alignment": JobRef(note="the psi job over the rows to score"),
    }

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _active_check),
            ("active", "wait-scores"): Phase(_scores_from_p1, _active_score),
            ("passive", "start"): Phase(nothing, _passive_send),
            ("passive", "collect-scores"): Phase(_scores_from_peers, _passive_collect),
        }
