"""The plaintext boosting reference against scikit-learn's HistGradientBoosting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import roc_auc_score

from vfl_cli.models import trees
from vfl_cli.models.binning import fit_binning

DATA = Path(__file__).resolve().parents[1] / "sample_data" / "fate"


def _joined(name: str, label: str = "y") -> tuple[pd.DataFrame, np.ndarray]:
    guest = pd.read_csv(DATA / f"{name}_hetero_guest.csv")
    host = pd.read_csv(DATA / f"{name}_hetero_host.csv")
    df = guest.merge(host, on="id", suffixes=("_a", "_p"))
    y = df.pop(label).to_numpy()
    return df.drop(columns=["id"]), y


def _split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = int(0.75 * n)
    return order[:cut], order[cut:]


def _binned(X: pd.DataFrame, train: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    binning = fit_binning(X.iloc[train], list(X.columns), max_bins=bins)
    n_bins = np.array([c.n_bins for c in binning.columns])
    return binning.transform(X), n_bins


def _sk(cls: type, p: trees.BoostParams, bins: int) -> object:
    return cls(max_iter=p.trees, max_depth=p.depth, learning_rate=p.learning_rate,
               l2_regularization=p.l2, max_bins=bins - 1, min_samples_leaf=p.min_samples_leaf,
               max_leaf_nodes=None, early_stopping=False)


def test_breast_auc_matches_sklearn() -> None:
    X, y = _joined("breast")
    train, test = _split(len(y))
    p = trees.BoostParams(trees=10, depth=3, learning_rate=0.3, l2=1.0)
    Xb, n_bins = _binned(X, train, 32)
    booster = trees.fit(Xb[train], n_bins, y[train], p)
    ours = roc_auc_score(y[test], booster.raw(Xb[test])[:, 0])
    sk = _sk(HistGradientBoostingClassifier, p, 32).fit(X.iloc[train], y[train])
    theirs = roc_auc_score(y[test], sk.decision_function(X.iloc[test]))
    assert abs(ours - theirs) <= 0.005, (ours, theirs)
    # the same trees: raw scores agree row by row, not only the AUC
    assert np.allclose(booster.raw(Xb[test])[:, 0], sk.decision_function(X.iloc[test]), atol=1e-6)


def test_multiclass_vehicle_accuracy_matches_sklearn() -> None:
    X, y = _joined("vehicle_scale")
    train, test = _split(len(y))
    p = trees.BoostParams(trees=5, depth=3, learning_rate=0.3, l2=1.0, objective="multiclass")
    Xb, n_bins = _binned(X, train, 16)
    k = int(y.max()) + 1
    booster = trees.fit(Xb[train], n_bins, y[train], p, n_classes=k)
    ours = np.mean(booster.raw(Xb[test]).argmax(axis=1) == y[test])
    sk = _sk(HistGradientBoostingClassifier, p, 16).fit(X.iloc[train], y[train])
    theirs = np.mean(sk.predict(X.iloc[test]) == y[test])
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


def test_regression_rmse_matches_sklearn() -> None:
    X, y = _joined("breast")
    target = X.pop("x0_a").to_numpy()
    train, test = _split(len(y))
    p = trees.BoostParams(trees=10, depth=3, learning_rate=0.3, l2=1.0, objective="regression")
    Xb, n_bins = _binned(X, train, 32)
    booster = trees.fit(Xb[train], n_bins, target[train], p)
    ours = np.sqrt(np.mean((booster.raw(Xb[test])[:, 0] - target[test]) ** 2))
    sk = _sk(HistGradientBoostingRegressor, p, 32).fit(X.iloc[train], target[train])
    theirs = np.sqrt(np.mean((sk.predict(X.iloc[test]) - target[test]) ** 2))
    assert abs(ours - theirs) <= 0.02 * theirs, (ours, theirs)


def test_gain_refuses_small_children() -> None:
    p = trees.BoostParams(min_samples_leaf=5, min_child_weight=1.0)
    gains = trees.split_gains(np.array([-3.0, -3.0, -3.0]), np.array([4.0, 0.5, 4.0]),
                              np.array([10, 10, 4]), -1.0, 8.0, 20, p)
    assert gains[0] == pytest.approx(9 / 4 + 4 / 4 - 1 / 8)
    assert np.isneginf(gains[1]) and np.isneginf(gains[2])


def test_subsampling_is_reproducible_and_keeps_columns_out() -> None:
    rng = np.random.default_rng(3)
    Xb = rng.integers(0, 8, size=(300, 6))
    y = (Xb[:, 0] + Xb[:, 5] > 7).astype(float)
    p = trees.BoostParams(trees=3, depth=2, colsample=0.5, subsample=0.8, seed=7)
    a = trees.fit(Xb, np.full(6, 8), y, p, blocks=[2, 4], active_trees=1)
    b = trees.fit(Xb, np.full(6, 8), y, p, blocks=[2, 4], active_trees=1)
    assert np.array_equal(a.raw(Xb), b.raw(Xb))
    assert len(a.rounds) == 1 + p.trees  # the protected round comes on top of the budget
    first = {n["split"][0] for n in a.rounds[0][0].nodes if n["split"] is not None}
    later = {n["split"][0] for t in a.rounds[1:] for n in t[0].nodes if n["split"] is not None}
    assert first and first <= {0, 1}  # the first round: the active party's block only
    assert 5 in later  # the label depends on column 5, a passive column, once allowed
