"""This party's aligned, split, standardised features (and labels for the active party).

Shared by the gradient-descent protocols (hetero-lr, hetero-linear, split-nn): every party
derives the same train/test split and mini-batches from the alignment's ids and the job's
public seed, so nothing is sent for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vfl_cli.errors import DataError
from vfl_cli.models.features import Split, aligned_rows, numeric_matrix, prepare, split_rows, validation_split
from vfl_cli.models.reference import minibatches
from vfl_cli.protocol.base import PartyContext
from vfl_cli.protocol.kit import finished_job


class PartyData:
    """This party's aligned, split, standardised features (and labels for A)."""

    def __init__(self, ctx: PartyContext, *, intercept: bool, hold_out: float = 0.0) -> None:
        alignment = ctx.params["alignment"]
        info = finished_job(ctx, alignment, ("psi",))
        self.fingerprint = str(info["results"]["fingerprint"])
        arrays = ctx.job_arrays(alignment)
        rows = arrays["aligned_rows"]
        df = aligned_rows(ctx.data(alignment), arrays, ctx.id_column, alignment)
        self.n = len(rows)
        # drawn from the aligned ids (keyed by the public seed), not their shuffled positions,
        # so that the same data and seed give the same test rows on every run
        self.split: Split = split_rows(self.n, ctx.params["test_fraction"], ctx.params["seed"],
                                       ids=arrays.get("aligned_ids"))
        raw = numeric_matrix(df, ctx.features, what=ctx.name)
        self.X, self.standardiser = prepare(raw, self.split, whiten=bool(ctx.params.get("whiten")))
        if intercept:
            self.X = np.hstack([self.X, np.ones((self.n, 1))])
        self.y: np.ndarray | None = None
        if ctx.label_column:
            y = numeric_matrix(df, [ctx.label_column], what=ctx.name)[:, 0]
            if np.isnan(y).any():
                raise DataError(f"{ctx.name}: the label column {ctx.label_column!r} has missing values")
            self.y = y
        # ``hold_out``: the share of the training rows kept out of the mini-batches (split-nn's
        # validation rows, public as the test rows are); ``fit``: the rows trained on
        val, fit = validation_split(len(self.split.train), hold_out)
        self.validation: np.ndarray = self.split.train[val]
        self.fit: np.ndarray = self.split.train[fit]
        batches = self._batches(ctx.params, 0)
        self.batches_per_epoch = len(batches)
        self.smallest_batch = min(len(b) for b in batches)

    def _batches(self, params: Mapping[str, Any], epoch: int) -> list[np.ndarray]:
        return minibatches(len(self.fit), params["batch_size"] or None, seed=params["seed"], epoch=epoch)

    def batch_rows(self, params: Mapping[str, Any], epoch: int, batch: int) -> np.ndarray:
        rows: np.ndarray = self.fit[self._batches(params, epoch)[batch]]
        return rows


__all__ = ["PartyData"]
