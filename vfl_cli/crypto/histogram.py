"""Encrypted gradient histograms for SecureBoost: per-row packing, bin sums, cumulative sums.

One ciphertext per row carries the row's count and, for every class column ``k``, its gradient
and hessian in fixed point (:class:`RowLayout`). Slots are wide enough for the sum over every
row (headroom from the row count), so homomorphic sums over any set of rows decode slot by
slot. Bin sums are the engine's multi-exponentiation with a 0/1 matrix (no Python loop over
rows); cumulative sums loop over bins only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gmpy2 import mpz  # type: ignore[import-untyped]

from vfl_cli.crypto import paillier_kernels as _k
from vfl_cli.crypto.paillier_array import EncryptedArray, encrypt
from vfl_cli.crypto.paillier_keys import PublicKey
from vfl_cli.crypto.paillier_matmul import plain_matmul
from vfl_cli.errors import EncodingOverflow

__all__ = ["RowLayout", "bin_sums", "cumulative", "encrypt_rows", "subtract"]


@dataclass(frozen=True)
class RowLayout:
    """Slots of a row's plaintext: ``[count, g_0, h_0, g_1, h_1, ...]`` from the lowest bits.

    ``g`` is carried as ``round(g 2^precision) + g_offset`` (non-negative), ``h`` as
    ``round(h 2^precision)`` (``h >= 0``); each slot holds the sum over ``rows`` rows.
    """

    classes: int
    precision: int
    g_bits: int  # |g| <= 2**g_bits and h <= 2**g_bits
    rows: int

    @property
    def slot_bits(self) -> int:
        return self.precision + self.g_bits + 2 + max(1, math.ceil(math.log2(self.rows + 1)))

    @property
    def slots(self) -> int:
        return 1 + 2 * self.classes

    @property
    def bits(self) -> int:
        return self.slot_bits * self.slots

    @property
    def g_offset(self) -> int:
        return 1 << (self.precision + self.g_bits)

    def quantise(self, x: np.ndarray) -> np.ndarray:
        """What the fixed point keeps of ``x`` (the active party sums these for its totals)."""
        scale = float(2**self.precision)
        return np.asarray(np.rint(x * scale) / scale)

    def encode(self, g: np.ndarray, h: np.ndarray) -> list[int]:
        """One plaintext per row of ``g, h`` (rows x classes)."""
        if np.abs(g).max(initial=0) > 2**self.g_bits or h.max(initial=0) > 2**self.g_bits:
            raise EncodingOverflow("a gradient exceeds the declared headroom")
        scale = float(2**self.precision)
        gq = np.rint(g * scale).astype(object) + self.g_offset
        hq = np.rint(h * scale).astype(object)
        out = []
        s = self.slot_bits
        for r in range(len(g)):
            v = 1
            for k in range(self.classes):
                v |= int(gq[r, k]) << (s * (1 + 2 * k))
                v |= int(hq[r, k]) << (s * (2 + 2 * k))
            out.append(v)
        return out

    def decode(self, sums: Sequence[int]) -> np.ndarray:
        """Sums of rows back to ``(count, G_0, H_0, ...)`` per value (float64, values x slots)."""
        s, mask = self.slot_bits, (1 << self.slot_bits) - 1
        out = np.empty((len(sums), self.slots))
        for i, v in enumerate(sums):
            v = int(v)
            if v >> self.bits:
                raise EncodingOverflow("a histogram sum overflows its slots")
            fields = [(v >> (s * j)) & mask for j in range(self.slots)]
            c = fields[0]
            out[i, 0] = c
            for k in range(self.classes):
                out[i, 1 + 2 * k] = (fields[1 + 2 * k] - c * self.g_offset) / 2**self.precision
                out[i, 2 + 2 * k] = fields[2 + 2 * k] / 2**self.precision
        return out


def encrypt_rows(public: PublicKey, plains: list[int]) -> EncryptedArray:
    """Fresh encryptions of the row plaintexts (exponent 0)."""
    if any(v.bit_length() >= public.n.bit_length() - 2 for v in plains):
        raise EncodingOverflow("a packed row does not fit the key; use fewer classes or a larger key")
    zeros = encrypt(public, np.zeros(len(plains)), exponent=0)
    N, nsq = mpz(public.n), mpz(public.nsquare)
    values = [_k.add_plain(c, mpz(v), N, nsq) for c, v in zip(zeros.raw_ciphertexts(), plains,
                                                               strict=True)]
    return EncryptedArray(public, values, (len(plains),), 0, fresh=True)


def bin_sums(rows: EncryptedArray, onehot: np.ndarray) -> EncryptedArray:
    """``onehot (bins x rows) @ rows``: the sum of the rows in every bin (not fresh)."""
    if rows.size == 0:
        return _zeros(rows.public, onehot.shape[0])
    return plain_matmul(onehot, rows, exponent=0)


def _zeros(public: PublicKey, count: int) -> EncryptedArray:
    """Trivial encryptions of 0 (the value 1): only ever combined, never sent as they are."""
    return EncryptedArray(public, [mpz(1)] * count, (count,), 0)


def subtract(parent: EncryptedArray, child: EncryptedArray) -> EncryptedArray:
    """``parent - child`` bin by bin (the sibling's histogram)."""
    nsq = mpz(parent.public.nsquare)
    inv = _k.batch_invert(child.raw_ciphertexts(), nsq)
    values = [a * b % nsq for a, b in zip(parent.raw_ciphertexts(), inv, strict=True)]
    return EncryptedArray(parent.public, values, parent.shape, 0)


def cumulative(bins: EncryptedArray, groups: Sequence[tuple[int, int]], bound_bits: int
               ) -> EncryptedArray:
    """Running sums within each ``(start, length)`` group, without each group's last one.

    The result carries the bound ``2**bound_bits`` (what the slots were sized for).
    """
    nsq = mpz(bins.public.nsquare)
    cts = bins.raw_ciphertexts()
    out = []
    for start, length in groups:
        acc = mpz(1)
        for b in range(start, start + length - 1):
            acc = acc * cts[b] % nsq
            out.append(acc)
    return EncryptedArray(bins.public, out, (len(out),), 0, bound=1 << bound_bits)
