"""A party's own feature preparation: encoders of text columns, the text-column error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl_cli.columns import parse_encodings
from vfl_cli.errors import DataError
from vfl_cli.models.features import MAX_ONEHOT, MISSING, Encoders, numeric_matrix

TRAIN = pd.DataFrame({"id": ["1", "2", "3", "4"], "region": ["n", "s", "n", None],
                      "size": ["a", "b", "b", "c"], "seg": ["x", "y", "x", "x"], "v": [1.0, 2.0, 3.0, 4.0]})
KINDS = {"region": "onehot", "size": "ordinal", "seg": "frequency"}


def test_each_kind_known_answers() -> None:
    enc = Encoders.fit(TRAIN, KINDS)
    assert enc.specs["region"]["categories"] == [MISSING, "n", "s"]
    assert enc.expand(["v", "region", "size", "seg"]) == ["v", f"region={MISSING}", "region=n", "region=s",
                                                          "size", "seg"]
    out = enc.transform(TRAIN)
    assert out[["region=n", "region=s", f"region={MISSING}"]].to_numpy().tolist() == [
        [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert out["size"].tolist() == [0.0, 1.0, 1.0, 2.0]
    assert out["seg"].tolist() == [0.75, 0.25, 0.75, 0.75]
    assert out["v"].tolist() == TRAIN["v"].tolist() and out["id"].tolist() == TRAIN["id"].tolist()


def test_unseen_categories_and_json_round_trip() -> None:
    enc = Encoders.from_json(Encoders.fit(TRAIN, KINDS).to_json())
    new = pd.DataFrame({"id": ["9"], "region": ["w"], "size": ["zz"], "seg": ["q"], "v": [5.0]})
    out = enc.transform(new)
    assert out[["region=n", "region=s", f"region={MISSING}"]].to_numpy().tolist() == [[0, 0, 0]]
    assert np.isnan(out["size"].iloc[0]) and out["seg"].iloc[0] == 0.0
    # encoded columns are numbers: the job's matrix takes them, imputing the unknown ordinal
    assert numeric_matrix(out, enc.expand(["v", "region", "size", "seg"]), what="t").shape == (1, 6)


def test_too_many_categories_for_onehot_names_the_other_kinds() -> None:
    wide = pd.DataFrame({"c": [f"k{i}" for i in range(MAX_ONEHOT + 1)]})
    with pytest.raises(DataError, match=r"too many for one-hot .* c=frequency or c=ordinal"):
        Encoders.fit(wide, {"c": "onehot"})
    assert len(Encoders.fit(wide, {"c": "frequency"}).specs["c"]["frequencies"]) == MAX_ONEHOT + 1


@pytest.mark.parametrize("items, message", [
    (["region"], "COLUMN=KIND"), (["region=hash"], "COLUMN=KIND"), (["=onehot"], "COLUMN=KIND"),
])
def test_bad_encode_options(items: list[str], message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_encodings(items)


def test_encode_option_parsing() -> None:
    assert parse_encodings(["a=b=onehot", "x=none"]) == {"a=b": "onehot", "x": "none"}


def test_text_column_error_names_both_fixes() -> None:
    with pytest.raises(DataError, match=r"'vfl columns --exclude seg' or encode it with 'vfl columns --encode seg="):
        numeric_matrix(TRAIN, ["v", "seg"], what="bureau")
    with pytest.raises(DataError, match=r"no column 'gone' any more"):
        numeric_matrix(TRAIN, ["gone"], what="bureau")


@settings(max_examples=60, deadline=None)
@given(train=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", " c ", "", "d"])), min_size=1, max_size=20),
       new=st.lists(st.one_of(st.none(), st.text(max_size=3)), min_size=1, max_size=10),
       kind=st.sampled_from(["onehot", "ordinal", "frequency"]))
def test_any_categories_encode_to_finite_numbers_of_fixed_width(train: list[str | None], new: list[str | None],
                                                                kind: str) -> None:
    enc = Encoders.fit(pd.DataFrame({"c": train}), {"c": kind})
    out = enc.transform(pd.DataFrame({"c": new}))
    assert list(out.columns) == enc.expand(["c"])
    values = out.to_numpy(dtype=float)
    assert values.shape == (len(new), len(enc.expand(["c"])))
    if kind != "ordinal":  # an unknown ordinal category is missing, to be imputed
        assert np.isfinite(values).all()
