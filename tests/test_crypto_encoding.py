"""The fixed-point encoding is phe's EncodedNumber, bit for bit."""

from __future__ import annotations

import numpy as np
import phe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl_cli.crypto import encoding as enc
from vfl_cli.errors import EncodingOverflow

N = phe.PaillierPublicKey(2**127 - 1).n  # any odd modulus will do for encoding
PUB = phe.PaillierPublicKey(N)

values = st.one_of(
    st.floats(-1e9, 1e9, allow_nan=False),
    st.floats(-1e-6, 1e-6, allow_nan=False),
    st.integers(-(2**40), 2**40).map(lambda i: i / 2**33),  # exact ties at the resolution
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_encoding_matches_phe(x):
    ours = enc.encode([x], N, enc.EXPONENT)[0][0]
    theirs = phe.EncodedNumber.encode(PUB, x, precision=16.0**enc.EXPONENT)
    assert theirs.exponent == enc.EXPONENT
    assert ours == theirs.encoding
    assert enc.decode([enc.signed(ours, N)], enc.EXPONENT)[0] == pytest.approx(
        theirs.decode(), rel=1e-15, abs=0
    )


@settings(max_examples=100, deadline=None)
@given(st.floats(-1e12, 1e12, allow_nan=False), st.integers(-12, 0))
def test_decode_inverts_encode_within_resolution(x, exponent):
    res, _ = enc.encode(np.array([x]), N, exponent)
    back = enc.decode([enc.signed(res[0], N)], exponent)[0]
    assert abs(back - x) <= 16.0**exponent / 2 + abs(x) * 2**-52


def test_overflow_band_and_limits():
    limit = enc.max_int(N)
    assert enc.signed(limit, N) == limit
    assert enc.signed(N - limit, N) == -limit
    with pytest.raises(EncodingOverflow):
        enc.signed(limit + 1, N)
    with pytest.raises(EncodingOverflow):
        enc.encode([2.0**120], N, enc.EXPONENT)
    with pytest.raises(EncodingOverflow):
        enc.encode([float("inf")], N, enc.EXPONENT)
    assert enc.int_bound(1.0, -8) >= 2**32


def test_huge_values_decode_without_float_overflow():
    big = 2**1100
    assert enc.decode([big], -300)[0] == pytest.approx(2.0 ** (1100 - 1200))
    with pytest.raises(EncodingOverflow):
        enc.decode([big], 0)


# -- base-16 exponent arithmetic --------------------------------------------------------------


def test_fraction_bits_and_rescale_factor():
    assert enc.fraction_bits(enc.EXPONENT) == 32
    assert enc.fraction_bits(-16) == 64 and enc.fraction_bits(2) == -8
    assert enc.rescale_factor(-8, -8) == 1
    assert enc.rescale_factor(-8, -16) == 16**8 == 2 ** enc.fraction_bits(-8)
    with pytest.raises(EncodingOverflow, match="can only be lowered"):
        enc.rescale_factor(-16, -8)


@settings(max_examples=200, deadline=None)
@given(values, st.integers(-20, 4))
def test_scaled_and_real_values_agree_with_phe_and_encode(x, exponent):
    ints = enc.scaled([x], exponent)
    assert ints.dtype == np.float64 and float(ints[0]).is_integer()
    assert int(ints[0]) == enc.encode_signed([x], exponent)[0]
    back = enc.real_values(ints, exponent)
    assert back[0] == enc.decode([int(ints[0])], exponent)[0]
    assert enc.round_to_grid([x], exponent)[0] == back[0]
    assert abs(back[0] - x) <= 0.5 * 16.0**exponent * (1 + 1e-12) + abs(x) * 2**-52


def test_real_values_places_ints_in_slots():
    ints = np.array([[1.0, -3.0], [5.0, 0.0]])
    out = enc.real_values(ints, enc.EXPONENT, shift_bits=10)
    np.testing.assert_array_equal(out, ints * 2.0**10 * 16.0**enc.EXPONENT)
    assert enc.encode_signed(out, enc.EXPONENT) == [v << 10 for v in [1, -3, 5, 0]]
