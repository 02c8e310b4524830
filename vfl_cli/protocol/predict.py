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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact
from vfl_cli.errors import VflError
from vfl_cli.models.features import aligned_rows, numeric_matrix, transform_from_arrays
from vfl_cli.protocol.base import Expect, JobRef, JobState, Outgoing, PartyContext, Protocol, need
from vfl_cli.protocol.hetero_linear import (
    PEER_SCORES,
    SCORES,
    HeteroLinear,
    HeteroLogistic,
    collect_scores,
    read_enc,
    send_scores,
)

MODELS: dict[str, HeteroLinear] = {"hetero-lr": HeteroLogistic(), "hetero-linear": HeteroLinear()}


def _model(ctx: PartyContext) -> tuple[HeteroLinear, dict[str, Any], dict[str, np.ndarray]]:
    job = ctx.params["model"]
    info = ctx.job_info(job)
    if info["protocol"] not in MODELS or not info["done"]:
        raise VflError(f"job {job} is not a finished hetero-lr or hetero-linear training job on {ctx.name}")
    return MODELS[info["protocol"]], info, ctx.job_arrays(job)


def _partial_scores(ctx: PartyContext) -> np.ndarray:
    """This party's share of the scores of the aligned rows: standardised X times its weights."""
    _, info, arrays = _model(ctx)
    alignment = ctx.params["alignment"]
    a_info = ctx.job_info(alignment)
    if a_info["protocol"] != "psi" or not a_info["done"]:
        raise VflError(f"job {alignment} is not a finished alignment (psi) job on {ctx.name}")
    features = info["results"]["model"]["features"]
    own = [f for f in features if f != "(intercept)"]
    df = aligned_rows(ctx.data(alignment), ctx.job_arrays(alignment), ctx.id_column, alignment)
    X = transform_from_arrays(arrays).transform(numeric_matrix(df, own, what=ctx.name))
    if ctx.is_active:
        X = np.hstack([X, np.ones((len(X), 1))])
    return X @ arrays["weights"]


class Predict(Protocol):
    name = "predict"
    summary = "joint scoring of aligned rows with a trained model; only the active party sees scores"

    params_spec = {"model": JobRef(note="the finished training job"),
                   "alignment": JobRef(note="the psi job over the rows to score")}

    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        if state.phase == "start":
            return []
        if ctx.is_active:
            return [Expect(ctx.passives[0], SCORES)]
        return [Expect(p, PEER_SCORES) for p in ctx.passives if p != ctx.name]

    def advance(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]) -> list[Outgoing]:
        if state.phase == "start":
            u = _partial_scores(ctx)  # checks model and alignment on every party first
            if ctx.is_active:
                state.phase = "wait-scores"
                return []
            out = send_scores(ctx, u, 0)
            if out is None:
                state.phase = "collect-scores"
                return []
            self._done(state, {"rows": len(u)})
            return out
        if not ctx.is_active:
            out = collect_scores(ctx, _partial_scores(ctx), received, 0)
            self._done(state, {"rows": int(out[0].meta["rows"])})
            return out
        own = _partial_scores(ctx)
        art = need(received, ctx.passives[0], SCORES)
        priv = ctx.private_key()
        z = own + priv.decrypt(read_enc(art, "u", priv.public, rows=len(own)))
        model, info, _ = _model(ctx)
        scores = 1.0 / (1.0 + np.exp(-z)) if model.task == "binary" else z
        state.arrays["scores"] = scores
        results: dict[str, Any] = {"rows": len(scores), "model": ctx.params["model"], "task": model.task}
        label = ctx.label_column
        alignment = ctx.params["alignment"]
        df = ctx.data(alignment)
        if label and label in df.columns:
            picked = aligned_rows(df, ctx.job_arrays(alignment), ctx.id_column, alignment)
            y = numeric_matrix(picked, [label], what=ctx.name)[:, 0]
            results["labelled_rows"] = int((~np.isnan(y)).sum())
            # rows to score often have no label yet (an empty cell): then no metrics, and the
            # scores are still delivered
            if results["labelled_rows"] == len(y):
                results["metrics"] = {"test": model.evaluate(y, z)}
        self._done(state, results)
        return []

    @staticmethod
    def _done(state: JobState, results: dict[str, Any]) -> None:
        state.phase = "done"
        state.done = True
        state.results = results
