"""Binning of a party's own columns (vfl_cli.models.binning)."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl_cli.errors import DataError, VflError
from vfl_cli.models.binning import (
    MISSING_BIN,
    Binning,
    ColumnBins,
    fit_binning,
    fit_column,
    opaque_ids,
)

FAST = settings(max_examples=40, deadline=None)

cells = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))
texts = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e"]))


@FAST
@given(values=st.lists(cells, min_size=1, max_size=80), max_bins=st.integers(3, 12),
       method=st.sampled_from(["quantile", "equal-width"]))
def test_every_numeric_row_lands_in_exactly_one_bin(values: list[float | None], max_bins: int,
                                                      method: str) -> None:
    s = pd.Series([np.nan if v is None else v for v in values], dtype=float)
    col = fit_column(s, name="x", method=method, max_bins=max_bins)
    bins = col.transform(s)
    assert col.n_bins <= max_bins
    assert bins.shape == (len(s),) and ((bins >= 0) & (bins < col.n_bins)).all()
    assert ((bins == MISSING_BIN) == s.isna().to_numpy()).all()
    # each value lies inside the interval of its bin: (cut[b-2], cut[b-1]]
    edges = np.array([-np.inf, *col.cuts, np.inf])
    x, b = s.to_numpy()[s.notna()], bins[s.notna()]
    assert ((edges[b - 1] < x) & (x <= edges[b])).all()


@FAST
@given(values=st.lists(texts, min_size=1, max_size=80), max_bins=st.integers(3, 8),
       min_share=st.sampled_from([0.0, 0.1, 0.3]))
def test_every_text_row_lands_in_exactly_one_bin(values: list[str | None], max_bins: int,
                                                   min_share: float) -> None:
    s = pd.Series(values, dtype=object)
    col = fit_column(s, name="t", max_bins=max_bins, min_share=min_share)
    bins = col.transform(s)
    assert col.kind == "category" and col.n_bins <= max_bins
    assert ((bins == MISSING_BIN) == s.isna().to_numpy()).all()
    counts = s.value_counts()
    for value, b in zip(values, bins, strict=True):
        if value is None:
            continue
        if value in col.categories:
            assert col.labels[b] == value
        else:  # rare (or beyond max_bins - 2) categories share the other bin
            assert b == col.other_bin
    assert all(counts[c] >= min_share * len(s) for c in col.categories)


@FAST
@given(n=st.integers(60, 400), k=st.integers(2, 10), seed=st.integers(0, 2**32 - 1))
def test_quantile_bins_are_balanced(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.permutation(n).astype(float) * rng.uniform(0.1, 10) + rng.normal()  # distinct values
    col = fit_column(pd.Series(x), name="x", max_bins=k + 1)
    counts = np.bincount(col.transform(pd.Series(x)), minlength=col.n_bins)[1:]
    assert len(counts) == k
    assert np.abs(counts - n / k).max() <= 2


def test_few_distinct_values_get_a_bin_each_cut_at_midpoints() -> None:
    col = fit_column(pd.Series([1, 1, 2, 5, 5, 5]), name="x", max_bins=10)
    assert col.cuts == (1.5, 3.5)
    assert col.transform(pd.Series([1, 2, 5, 0, 9, None])).tolist() == [1, 2, 3, 1, 3, 0]
    assert col.labels == ("missing", "(-inf, 1.5]", "(1.5, 3.5]", "(3.5, inf)")


def test_equal_width_and_user_cuts() -> None:
    s = pd.Series([0.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    assert fit_column(s, name="x", method="equal-width", max_bins=6).cuts == (2.0, 4.0, 6.0, 8.0)
    col = fit_column(s, name="x", method="cuts", cuts=[3, 1])
    assert col.cuts == (1.0, 3.0)
    # right-closed: a value equal to a cut belongs to the bin below it
    assert col.transform(pd.Series([1.0, 1.0001, 3.0, 3.5])).tolist() == [1, 2, 2, 3]


@FAST
@given(values=st.lists(cells, min_size=1, max_size=40),
       words=st.lists(texts, min_size=1, max_size=40))
def test_json_round_trip(values: list[float | None], words: list[str | None]) -> None:
    n = min(len(values), len(words))
    df = pd.DataFrame({"x": pd.Series(values[:n], dtype=float),
                       "t": pd.Series(words[:n], dtype=object)})
    binning = fit_binning(df, ["x", "t"], max_bins=6, min_share=0.0)
    again = Binning.from_json(json.loads(json.dumps(binning.to_json())))
    assert again == binning
    assert (again.transform(df) == binning.transform(df)).all()


def test_unseen_categories_go_to_other() -> None:
    train = pd.DataFrame({"city": ["paris"] * 6 + ["lyon"] * 3 + ["nice"]})
    binning = fit_binning(train, ["city"], min_share=0.2)
    col = binning.column("city")
    assert col.categories == ("paris", "lyon")
    bins = binning.transform(pd.DataFrame({"city": ["lyon", "nice", "oslo", None, "paris"]}))
    assert bins[:, 0].tolist() == [2, 3, 3, MISSING_BIN, 1]
    assert col.labels[3] == "other"


def test_numeric_column_binned_by_category() -> None:
    df = pd.DataFrame({"grade": [1, 2, 2, 3, 3, 3]})
    binning = fit_binning(df, ["grade"], categorical=["grade"], min_share=0.0)
    assert binning.column("grade").categories == ("3", "2", "1")
    later = pd.DataFrame({"grade": [3.0, 1.0, 7.0, None]})
    assert binning.transform(later)[:, 0].tolist() == [1, 3, 4, 0]


def test_text_in_a_numeric_column_is_refused_not_made_missing() -> None:
    col = fit_column(pd.Series([1.0, 2.0, 3.0]), name="age", max_bins=4)
    with pytest.raises(DataError, match="column 'age' holds text \\('n/a'\\)"):
        col.transform(pd.Series(["1", "n/a"], dtype=object))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_bins": 2}, "max_bins must be between 3 and 1024"),
    ({"method": "kmeans"}, "binning method must be one of"),
    ({"method": "cuts"}, "method 'cuts' needs cut points"),
    ({"method": "cuts", "cuts": [1.0, float("inf")]}, "cut points must be finite"),
    ({"min_share": 1.5}, "min_share must be"),
])
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(VflError, match=message):
        fit_column(pd.Series([1.0, 2.0]), name="x", **kwargs)  # type: ignore[arg-type]


def test_unknown_column_and_damaged_state_are_refused() -> None:
    with pytest.raises(DataError, match="no column 'y' to bin"):
        fit_binning(pd.DataFrame({"x": [1.0]}), ["y"])
    with pytest.raises(VflError, match="binning state is damaged"):
        Binning.from_json({"version": 1, "columns": [{"name": "x", "kind": "numeric"}]})
    with pytest.raises(VflError, match="strictly increasing"):
        ColumnBins("x", "numeric", (2.0, 1.0))


def test_opaque_ids_cover_every_bin_once_and_look_up_back() -> None:
    df = pd.DataFrame({"x": np.arange(50.0), "t": ["a", "b"] * 25})
    binning = fit_binning(df, ["x", "t"], max_bins=5)
    ids = opaque_ids(binning)
    total = sum(c.n_bins for c in binning.columns)
    every = np.concatenate([ids.ids("x"), ids.ids("t")])
    assert sorted(every.tolist()) == list(range(total))
    for name in ("x", "t"):
        for b, i in enumerate(ids.ids(name)):
            assert ids.lookup(int(i)) == (name, b)
    with pytest.raises(VflError, match="not one this party gave out"):
        ids.lookup(total)
    assert type(ids).from_json(json.loads(json.dumps(ids.to_json()))) == ids


def test_opaque_ids_are_shuffled() -> None:
    binning = fit_binning(pd.DataFrame({"x": np.arange(100.0)}), ["x"], max_bins=64)
    orders = {tuple(opaque_ids(binning).ids("x")) for _ in range(3)}
    assert len(orders) == 3  # 64! orders: three equal draws would mean no shuffling
    seeded = [opaque_ids(binning, random.Random(7)).ids("x").tolist() for _ in range(2)]
    assert seeded[0] == seeded[1]


@pytest.mark.parametrize("max_bins", [9, 33, 256])
def test_quantile_bins_split_rows_like_hist_gradient_boosting(max_bins: int) -> None:
    from tests.conftest import fate

    binning_module = pytest.importorskip("sklearn.ensemble._hist_gradient_boosting.binning")
    df = pd.read_csv(fate("default_credit_hetero_host.csv"))
    columns = [c for c in df.columns if c != "id"]
    # _BinMapper's n_bins counts the missing bin like ours (HistGradientBoosting's max_bins not)
    theirs = binning_module._BinMapper(n_bins=max_bins, random_state=0).fit_transform(
        df[columns].to_numpy())
    ours = fit_binning(df, columns, max_bins=max_bins).transform(df)
    for j in range(len(columns)):
        pairs = set(zip(theirs[:, j].tolist(), ours[:, j].tolist(), strict=True))
        # the same partition of rows: each of their bins is exactly one of ours
        assert len(pairs) == len(set(theirs[:, j])) == len(set(ours[:, j])), columns[j]
