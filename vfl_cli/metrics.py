"""Evaluation metrics for the models a job trains.

Thin wrappers over :mod:`sklearn.metrics` that check their input, refuse degenerate input with a
:class:`~vfl_cli.errors.DataError` instead of a warning and a NaN, and return plain Python
``float``/``int``/``list`` values that go straight into a JSON report.

Only the active party computes these, on its own labels and the (decrypted or aggregated)
predictions; nothing here is sent to a peer.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

from vfl_cli.errors import DataError

__all__ = [
    "classification_metrics",
    "confusion",
    "ks_curve",
    "multiclass_metrics",
    "regression_metrics",
    "roc_curve_points",
]

# Row sums of a probability matrix may be off by this much (float rounding, fixed-point decoding).
_PROBA_SUM_TOLERANCE = 1e-4


def _as_vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise DataError(f"{name} is empty; metrics need at least one sample")
    return array


def _as_float_vector(values: Any, name: str) -> np.ndarray:
    array = _as_vector(values, name)
    try:
        array = array.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric: {exc}") from exc
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise DataError(f"{name} contains {bad} NaN or infinite values")
    return array


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise DataError(f"{name_a} has {len(a)} values but {name_b} has {len(b)}")


def _binary_inputs(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _as_float_vector(y_true, "y_true")
    s = _as_float_vector(scores, "scores")
    _check_same_length(y, s, "y_true", "scores")
    labels = set(np.unique(y).tolist())
    if not labels <= {0.0, 1.0}:
        extra = sorted(labels - {0.0, 1.0})[:5]
        raise DataError(f"y_true must hold only 0 and 1, found {extra}")
    if len(labels) < 2:
        only = int(next(iter(labels)))
        raise DataError(
            f"y_true holds only class {only} ({len(y)} samples); AUC, KS and log-loss need both "
            "classes, evaluate on a larger or stratified sample"
        )
    return y.astype(np.int64), s


def _check_probabilities(s: np.ndarray, name: str) -> None:
    low, high = float(np.min(s)), float(np.max(s))
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{name} must be probabilities in [0, 1], found values from {low:g} to {high:g}; "
            "apply the sigmoid (or softmax) to raw scores first"
        )


def classification_metrics(y_true: Any, scores: Any, *, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of a binary classifier.

    Args:
        y_true: True labels, 0 or 1, shape ``(n,)``.
        scores: Predicted probabilities of class 1, in ``[0, 1]``, shape ``(n,)``.
        threshold: A sample is predicted positive when its score is ``>= threshold``.

    Returns:
        ``auc``, ``ks`` (max of ``tpr - fpr`` over the ROC curve), ``accuracy``, ``precision``,
        ``recall``, ``f1`` (of class 1; 0.0 when nothing is predicted positive) and ``log_loss``
        (natural log, probabilities clipped away from 0 and 1 by scikit-learn), as floats.

    Raises:
        DataError: If the input is empty, of different lengths, not finite, the labels are not
            0/1, only one class is present, or a score lies outside ``[0, 1]``.
    """
    y, s = _binary_inputs(y_true, scores)
    _check_probabilities(s, "scores")
    predicted = (s >= threshold).astype(np.int64)
    fpr, tpr, _ = skm.roc_curve(y, s)
    return {
        "auc": float(skm.roc_auc_score(y, s)),
        "ks": float(np.max(tpr - fpr)),
        "accuracy": float(skm.accuracy_score(y, predicted)),
        "precision": float(skm.precision_score(y, predicted, zero_division=0.0)),
        "recall": float(skm.recall_score(y, predicted, zero_division=0.0)),
        "f1": float(skm.f1_score(y, predicted, zero_division=0.0)),
        "log_loss": float(skm.log_loss(y, s, labels=[0, 1])),
    }


def multiclass_metrics(y_true: Any, proba: Any) -> dict[str, float]:
    """Metrics of a multi-class classifier.

    Args:
        y_true: True class indices ``0 .. k-1``, shape ``(n,)``.
        proba: Predicted class probabilities, shape ``(n, k)``; column ``j`` is class ``j`` and
            each row sums to 1.

    Returns:
        ``accuracy`` (of the most probable class), ``f1_macro`` (unweighted mean of the per-class
        F1 over the classes present in ``y_true`` or predicted) and ``log_loss``, as floats.

    Raises:
        DataError: If the input is empty, the shapes disagree, ``proba`` is not a probability
            matrix, a label is not a column index, or ``y_true`` holds only one class.
    """
    y = _as_float_vector(y_true, "y_true")
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise DataError(f"proba must have shape (n_samples, n_classes >= 2), got {p.shape}")
    _check_same_length(y, p, "y_true", "proba")
    if not np.all(np.isfinite(p)):
        raise DataError("proba contains NaN or infinite values")
    _check_probabilities(p, "proba")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > _PROBA_SUM_TOLERANCE:
        raise DataError(f"proba rows must sum to 1, row {worst} sums to {sums[worst]:.6g}")
    n_classes = p.shape[1]
    if not np.all((y == np.round(y)) & (y >= 0) & (y < n_classes)):
        raise DataError(f"y_true must hold class indices 0..{n_classes - 1} (one per proba column)")
    y_int = y.astype(np.int64)
    if len(np.unique(y_int)) < 2:
        raise DataError(
            f"y_true holds only class {int(y_int[0])} ({len(y_int)} samples); "
            "evaluate on a sample with at least two classes"
        )
    predicted = np.argmax(p, axis=1)
    return {
        "accuracy": float(skm.accuracy_score(y_int, predicted)),
        "f1_macro": float(skm.f1_score(y_int, predicted, average="macro", zero_division=0.0)),
        "log_loss": float(skm.log_loss(y_int, p, labels=list(range(n_classes)))),
    }


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Metrics of a regression model.

    Args:
        y_true: True targets, shape ``(n,)``.
        y_pred: Predictions, shape ``(n,)``.

    Returns:
        ``rmse``, ``mae`` and ``r2`` (coefficient of determination), as floats.

    Raises:
        DataError: If the input is empty, of different lengths, not finite, or ``y_true`` is
            constant (R2 is undefined then).
    """
    y = _as_float_vector(y_true, "y_true")
    pred = _as_float_vector(y_pred, "y_pred")
    _check_same_length(y, pred, "y_true", "y_pred")
    if np.ptp(y) == 0.0:
        raise DataError(
            f"y_true is constant ({y[0]:g} for all {len(y)} samples); R2 is undefined, "
            "evaluate on a sample whose target varies"
        )
    return {
        # sqrt of MSE rather than root_mean_squared_error, which needs scikit-learn >= 1.4.
        "rmse": math.sqrt(float(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)),
    }


def _roc(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, s = _binary_inputs(y_true, scores)
    fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=True)
    # scikit-learn >= 1.3 gives the (0, 0) point an infinite threshold, which JSON cannot hold;
    # use max(scores) + 1 as older releases did: no sample reaches it either.
    thresholds = thresholds.copy()
    thresholds[0] = float(np.max(s)) + 1.0
    return fpr, tpr, thresholds


def roc_curve_points(y_true: Any, scores: Any) -> dict[str, list[float]]:
    """Points of the ROC curve, for plotting in a report.

    Collinear points are dropped (scikit-learn's ``drop_intermediate``), so the curve stays small
    for large evaluation sets.

    Args:
        y_true: True labels, 0 or 1, shape ``(n,)``.
        scores: Scores of class 1 (any monotone score, not necessarily probabilities).

    Returns:
        ``fpr``, ``tpr`` and ``thresholds`` lists of equal length, from ``(0, 0)`` to ``(1, 1)``.
        Point ``i`` predicts positive when ``score >= thresholds[i]``; the first threshold is
        ``max(scores) + 1``.

    Raises:
        DataError: If the input is empty, not finite, not 0/1 labels or only one class.
    """
    fpr, tpr, thresholds = _roc(y_true, scores)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def ks_curve(y_true: Any, scores: Any) -> dict[str, Any]:
    """The Kolmogorov-Smirnov curve: cumulative share of positives and negatives by threshold.

    Args:
        y_true: True labels, 0 or 1, shape ``(n,)``.
        scores: Scores of class 1.

    Returns:
        ``thresholds`` (decreasing), ``tpr`` and ``fpr`` (share of positives and of negatives
        scoring ``>=`` each threshold), ``gap`` (``tpr - fpr``), and ``ks`` (max gap) with
        ``ks_threshold``, the threshold where it is reached.

    Raises:
        DataError: If the input is empty, not finite, not 0/1 labels or only one class.
    """
    fpr, tpr, thresholds = _roc(y_true, scores)
    gap = tpr - fpr
    best = int(np.argmax(gap))
    return {
        "thresholds": thresholds.tolist(),
        "tpr": tpr.tolist(),
        "fpr": fpr.tolist(),
        "gap": gap.tolist(),
        "ks": float(gap[best]),
        "ks_threshold": float(thresholds[best]),
    }


def confusion(y_true: Any, y_pred: Any, *, labels: list[Any] | None = None) -> dict[str, Any]:
    """Confusion matrix of predicted labels.

    Args:
        y_true: True labels, shape ``(n,)``.
        y_pred: Predicted labels (not scores), shape ``(n,)``; booleans count as 0/1.
        labels: Labels to index the matrix by, in order; by default the sorted union of the
            labels in ``y_true`` and ``y_pred``.

    Returns:
        ``labels`` and ``matrix``, where ``matrix[i][j]`` counts samples of true label
        ``labels[i]`` predicted as ``labels[j]``. For binary labels ``[0, 1]`` that is
        ``[[tn, fp], [fn, tp]]``.

    Raises:
        DataError: If the input is empty or of different lengths.
    """
    y = _as_vector(y_true, "y_true")
    pred = _as_vector(y_pred, "y_pred")
    _check_same_length(y, pred, "y_true", "y_pred")
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if pred.dtype == np.bool_:
        pred = pred.astype(np.int64)
    if labels is None:
        found = np.unique(np.concatenate([y, pred]))
    else:
        if not labels:
            raise DataError("labels is empty; give at least one label or leave it out")
        found = np.asarray(labels)
    with warnings.catch_warnings():
        # scikit-learn warns when only one label occurs; that case is well defined here.
        warnings.simplefilter("ignore", UserWarning)
        matrix = skm.confusion_matrix(y, pred, labels=found)
    return {
        "labels": [value.item() if hasattr(value, "item") else value for value in found],
        "matrix": matrix.astype(int).tolist(),
    }
