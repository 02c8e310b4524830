"""vfl_cli.metrics: values agree with scikit-learn, are JSON-ready, and bad input is refused."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from vfl_cli.errors import DataError, VflError
from vfl_cli.metrics import (
    classification_metrics,
    confusion,
    ks_curve,
    multiclass_metrics,
    regression_metrics,
    roc_curve_points,
)

Y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
S = np.array([0.1, 0.8, 0.6, 0.4, 0.3, 0.2, 0.7, 0.9])


def _all_plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _all_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_plain(v) for v in value)
    return type(value) in (float, int)


def test_classification_known_answer() -> None:
    result = classification_metrics(Y, S)
    # Hand count at 0.5: predicted 1 for 0.8, 0.6, 0.7, 0.9 -> tp 3, fp 1, fn 1, tn 3.
    assert result["accuracy"] == 0.75
    assert result["precision"] == 0.75
    assert result["recall"] == 0.75
    assert result["f1"] == 0.75
    # 13 of the 16 positive/negative pairs are ranked correctly.
    assert result["auc"] == pytest.approx(13 / 16)
    assert result["ks"] == pytest.approx(0.5)
    assert result["log_loss"] == pytest.approx(skm.log_loss(Y, S))
    assert set(result) == {"auc", "ks", "accuracy", "precision", "recall", "f1", "log_loss"}


def test_results_are_plain_json_values() -> None:
    results = [
        classification_metrics(Y, S),
        roc_curve_points(Y, S),
        ks_curve(Y, S),
        confusion(Y, S >= 0.5),
        regression_metrics([1.0, 2.0, 3.0], [1.1, 1.9, 3.2]),
        multiclass_metrics([0, 1, 2], np.eye(3) * 0.7 + 0.1),
    ]
    for result in results:
        assert _all_plain(result), result
        json.dumps(result, allow_nan=False)


def test_threshold_changes_hard_predictions_only() -> None:
    low = classification_metrics(Y, S, threshold=0.25)
    base = classification_metrics(Y, S)
    assert low["recall"] == 1.0
    assert low["auc"] == base["auc"] and low["log_loss"] == base["log_loss"]


def test_nothing_predicted_positive_gives_zero_precision_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = classification_metrics([0, 1, 0, 1], [0.1, 0.3, 0.2, 0.4])
    assert result["precision"] == 0.0 and result["f1"] == 0.0 and result["auc"] == 1.0


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.floats(0, 1, allow_nan=False)), min_size=2, max_size=60
    )
)
def test_ks_matches_roc_and_curve(pairs: list[tuple[int, float]]) -> None:
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs])
    if len(set(y.tolist())) < 2:
        with pytest.raises(DataError):
            classification_metrics(y, s)
        return
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    result = classification_metrics(y, s)
    assert result["ks"] == pytest.approx(float(np.max(tpr - fpr)))
    assert result["auc"] == pytest.approx(skm.roc_auc_score(y, s))
    curve = ks_curve(y, s)
    assert curve["ks"] == pytest.approx(result["ks"])
    at = curve["ks_threshold"]
    gap_at = (s[y == 1] >= at).mean() - (s[y == 0] >= at).mean()
    assert gap_at == pytest.approx(curve["ks"])


def test_roc_curve_points_shape_and_ends() -> None:
    roc = roc_curve_points(Y, S)
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert roc["thresholds"][0] > max(S)
    assert skm.auc(roc["fpr"], roc["tpr"]) == pytest.approx(13 / 16)
    # Raw scores (not probabilities) are fine for curves.
    assert roc_curve_points(Y, S * 10 - 5)["tpr"] == roc["tpr"]


def test_confusion_binary_and_labels() -> None:
    result = confusion(Y, S >= 0.5)
    assert result == {"labels": [0, 1], "matrix": [[3, 1], [1, 3]]}
    result = confusion(["a", "b", "a"], ["a", "a", "a"], labels=["b", "a"])
    assert result == {"labels": ["b", "a"], "matrix": [[0, 1], [0, 2]]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert confusion([1, 1], [1, 1]) == {"labels": [1], "matrix": [[2]]}


def test_multiclass_against_sklearn() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, size=50)
    result = multiclass_metrics(y, proba)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, proba.argmax(axis=1)))
    assert result["f1_macro"] == pytest.approx(
        skm.f1_score(y, proba.argmax(axis=1), average="macro")
    )
    assert result["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=[0, 1, 2, 3]))


def test_regression_against_sklearn() -> None:
    y = np.array([3.0, -0.5, 2.0, 7.0])
    pred = np.array([2.5, 0.0, 2.0, 8.0])
    result = regression_metrics(y, pred)
    assert result["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert result["mae"] == pytest.approx(0.5)
    assert result["r2"] == pytest.approx(skm.r2_score(y, pred))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: classification_metrics([], []), "y_true is empty"),
        (lambda: classification_metrics([1, 1, 1], [0.2, 0.5, 0.9]), "only class 1"),
        (lambda: classification_metrics([0, 1, 2], [0.2, 0.5, 0.9]), "only 0 and 1"),
        (lambda: classification_metrics([0, 1], [0.2]), "y_true has 2 values but scores has 1"),
        (lambda: classification_metrics([0, 1], [-1.0, 2.0]), "probabilities in [0, 1]"),
        (lambda: classification_metrics([0, 1], [0.1, np.nan]), "NaN or infinite"),
        (lambda: roc_curve_points([0, 0], [0.1, 0.2]), "only class 0"),
        (lambda: ks_curve([], []), "empty"),
        (lambda: regression_metrics([], []), "empty"),
        (lambda: regression_metrics([2.0, 2.0], [1.0, 3.0]), "constant"),
        (lambda: multiclass_metrics([0, 0], [[0.6, 0.4], [0.9, 0.1]]), "only class 0"),
        (lambda: multiclass_metrics([0, 3], [[0.6, 0.4], [0.9, 0.1]]), "class indices 0..1"),
        (lambda: multiclass_metrics([0, 1], [[0.6, 0.6], [0.9, 0.1]]), "sum to 1"),
        (lambda: multiclass_metrics([0, 1], [0.6, 0.4]), "shape"),
        (lambda: confusion([], []), "empty"),
    ],
)
def test_degenerate_input_is_a_data_error(call: object, message: str) -> None:
    with pytest.raises(DataError) as info:
        call()  # type: ignore[operator]
    assert message in str(info.value)
    assert isinstance(info.value, VflError)
