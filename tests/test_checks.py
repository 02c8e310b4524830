"""vfl_cli.checks.whole / np_whole: the one "whole number, not a bool" check (issue #13)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from vfl_cli.checks import np_whole, whole

BOUND = st.none() | st.integers(-1000, 1000)


@given(st.integers(-10**30, 10**30), BOUND, BOUND)
def test_a_python_int_is_whole_exactly_within_its_bounds(value: int, low: int | None, high: int | None) -> None:
    inside = (low is None or value >= low) and (high is None or value <= high)
    assert whole(value, low, high) is inside
    assert np_whole(value, low, high) is inside


@given(st.booleans() | st.floats(allow_nan=True) | st.text(max_size=4) | st.none()
       | st.lists(st.integers(), max_size=2))
def test_bools_floats_text_and_lists_are_never_whole(value: object) -> None:
    assert not whole(value) and not np_whole(value)
    assert not whole(value, 0, 10) and not np_whole(value, 0, 10)


@given(st.integers(-2**62, 2**62), st.sampled_from([np.int64, np.int32, np.uint64, np.int8]))
def test_numpy_integers_are_whole_for_np_whole_only(value: int, dtype: type) -> None:
    info = np.iinfo(dtype)
    x = dtype(min(max(value, info.min), info.max))
    assert np_whole(x) and not whole(x)
    assert not np_whole(np.bool_(True)) and not np_whole(np.float64(3.0))
