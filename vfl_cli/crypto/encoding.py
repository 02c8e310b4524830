"""Fixed-point encoding of real numbers into the Paillier plaintext space, phe-compatible.

A real value ``x`` is carried as the integer ``round(x * 16**-exponent)`` taken modulo ``n``:
exactly python-paillier's ``EncodedNumber`` with ``BASE = 16``, so a ciphertext of that
integer with that exponent decrypts with phe to ``x``. Every transmitted number uses the fixed
exponent :data:`EXPONENT`, so the exponent never tells a peer how precise a value was.

Integers in ``[0, max_int]`` are non-negative values, ``[n - max_int, n)`` negative values, and
the middle third is reserved for overflow detection (phe's ``max_int = n // 3 - 1``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from vfl_cli.errors import EncodingOverflow

BASE = 16
LOG2_BASE = 4
EXPONENT = -8
"""Fixed base-16 exponent of every transmitted number: a resolution of 16**-8 = 2**-32."""

__all__ = [
    "BASE",
    "EXPONENT",
    "LOG2_BASE",
    "decode",
    "encode",
    "encode_signed",
    "fraction_bits",
    "int_bound",
    "max_int",
    "real_values",
    "rescale_factor",
    "round_to_grid",
    "scaled",
    "signed",
]


def max_int(n: int) -> int:
    """Largest magnitude of an encoded integer under modulus ``n`` (phe's ``max_int``)."""
    return n // 3 - 1


def encode_signed(values: np.ndarray | float | Sequence[float], exponent: int) -> list[int]:
    """Round real values to signed integers ``round(x * 16**-exponent)`` (half to even, like phe).

    Args:
        values: real values of any shape (flattened in C order).
        exponent: base-16 exponent of the encoding.

    Returns:
        One Python int per value.

    Raises:
        EncodingOverflow: a value is NaN or infinite, or too large for a float64 after scaling.
    """
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size and not np.all(np.isfinite(a)):
        raise EncodingOverflow("cannot encode NaN or infinite values")
    ints = scaled(a, exponent)
    if a.size and not np.all(np.isfinite(ints)):
        raise EncodingOverflow(f"values too large to encode with exponent {exponent}")
    if a.size == 0:
        return []
    if float(np.max(np.abs(ints))) < 2.0**62:
        return ints.astype(np.int64).tolist()  # type: ignore[no-any-return]
    return [int(v) for v in ints.tolist()]


def encode(
    values: np.ndarray | float | Sequence[float], n: int, exponent: int
) -> tuple[list[int], int]:
    """Encode real values as residues modulo ``n``, phe-compatible.

    Args:
        values: real values of any shape (flattened in C order).
        n: the Paillier modulus.
        exponent: base-16 exponent.

    Returns:
        The residues in ``[0, n)`` and the largest magnitude of the signed integers.

    Raises:
        EncodingOverflow: a value does not fit the plaintext space (magnitude above ``max_int``).
    """
    ints = encode_signed(values, exponent)
    biggest = max((abs(v) for v in ints), default=0)
    limit = max_int(n)
    if biggest > limit:
        raise EncodingOverflow(
            f"a value encodes to {biggest.bit_length()} bits with exponent {exponent}, more than "
            f"the {limit.bit_length()}-bit plaintext space of this key allows; scale the data down"
        )
    return [v % n for v in ints], biggest


def signed(residue: int, n: int) -> int:
    """Map a residue modulo ``n`` to the signed integer it encodes.

    Raises:
        EncodingOverflow: the residue lies in the middle third reserved for overflow detection.
    """
    limit = max_int(n)
    if residue <= limit:
        return residue
    if residue >= n - limit:
        return residue - n
    raise EncodingOverflow(
        "a decrypted value overflowed the plaintext space (it lies in the band reserved for "
        "overflow detection); the computation exceeded the key's capacity"
    )


def _to_float(v: int, exponent: int) -> float:
    shift = LOG2_BASE * exponent
    try:
        return math.ldexp(float(v), shift)
    except OverflowError:
        excess = abs(v).bit_length() - 60
        try:
            return math.ldexp(float(v >> excess), excess + shift)
        except OverflowError:
            raise EncodingOverflow("a decoded value does not fit a float64") from None


def decode(ints: Iterable[int], exponent: int) -> np.ndarray:
    """Turn signed integers back into float64 values ``v * 16**exponent`` (1-D)."""
    return np.array([_to_float(int(v), exponent) for v in ints], dtype=np.float64)


def int_bound(max_abs: float, exponent: int) -> int:
    """Integer bound on the encoding of any value whose magnitude is at most ``max_abs``."""
    if not math.isfinite(max_abs) or max_abs < 0:
        raise EncodingOverflow(f"a bound must be a finite non-negative number, got {max_abs}")
    return math.ceil(math.ldexp(max_abs, -LOG2_BASE * exponent)) + 1


# --------------------------------------------------------------------------------------------
# base-16 exponent arithmetic, spelled once (protocols should use these, not 16** or 4*e)


def fraction_bits(exponent: int) -> int:
    """Bits below the binary point of an encoding with ``exponent``: ``-4 * exponent``.

    32 for the transmitted :data:`EXPONENT`; negative for a positive exponent.
    """
    return -LOG2_BASE * exponent


def rescale_factor(from_exponent: int, to_exponent: int) -> int:
    """The integer ``16**(from_exponent - to_exponent)`` that carries an encoding to a lower
    exponent (multiply a plaintext, or raise a ciphertext, by it).

    Raises:
        EncodingOverflow: ``to_exponent`` is higher than ``from_exponent`` (precision would be
            lost: an exponent can only be lowered).
    """
    if to_exponent > from_exponent:
        raise EncodingOverflow(
            f"an exponent can only be lowered, not raised from {from_exponent} to {to_exponent}"
        )
    return int(BASE ** (from_exponent - to_exponent))


def scaled(values: np.ndarray | float | Sequence[float], exponent: int) -> np.ndarray:
    """The float64 integers ``rint(x * 16**-exponent)`` (half to even), exactly, same shape.

    No range check: :func:`encode_signed` checks and converts to Python ints.
    """
    # ldexp by a power of two is exact, and rint rounds half to even like Python's round().
    out: np.ndarray = np.rint(np.ldexp(np.asarray(values, dtype=np.float64), -LOG2_BASE * exponent))
    return out


def real_values(
    ints: np.ndarray | float | Sequence[float], exponent: int, *, shift_bits: int = 0
) -> np.ndarray:
    """The real values whose encodings at ``exponent`` are ``ints * 2**shift_bits``.

    ``ints * 2**shift_bits * 16**exponent`` as float64 (exact while the result is a float64);
    ``shift_bits`` places an integer in a packed slot (``slot_bits * j``).
    """
    out: np.ndarray = np.ldexp(
        np.asarray(ints, dtype=np.float64), shift_bits + LOG2_BASE * exponent
    )
    return out


def round_to_grid(values: np.ndarray | float | Sequence[float], exponent: int) -> np.ndarray:
    """``values`` rounded to the nearest multiple of ``16**exponent`` (what encoding keeps)."""
    return real_values(scaled(values, exponent), exponent)
