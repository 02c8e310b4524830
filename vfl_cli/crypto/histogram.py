"""Encrypted gradient histograms for SecureBoost: per-row packing, bin sums, cumulative sums.

One ciphertext per row carries the row's count and, for every class column ``k``, its gradient
and hessian in fixed point (:class:`RowLayout`). Slots are wide enough for the sum over every
row (headroom from the row count), so homomorphic sums over any set of rows decode slot by
slot.

Where the time goes and what is done about it (default_credit, 24,000 rows, 2048-bit keys):

* encryption of the rows by the key holder: the engine's DJN form ``(1 + m n) h**a`` with the
  fixed-base tables taken modulo ``p^2`` and ``q^2`` and joined by the CRT (the key holder knows
  the factors): the same ciphertexts, less work than the tables modulo ``n^2``;
* bin sums: rows multiplied per distinct combination of a group of columns' bins, then each
  combination into its bins (fewer products than one per row and column), chunked over rows
  across forked workers; no 0/1 matrix;
* packing the candidates' sums: Horner's rule per ciphertext in the workers, each packed
  ciphertext re-randomised there with a long DJN exponent (its recipient is the key holder;
  see :func:`vfl_cli.crypto.paillier_array.rerandomize`) instead of a uniform ``r**n``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz

from vfl_cli.crypto import paillier_kernels as _k
from vfl_cli.crypto import parallel as _par
from vfl_cli.crypto.packing import Packed, SlotLayout
from vfl_cli.crypto.paillier_array import EncryptedArray, encrypt
from vfl_cli.crypto.paillier_keys import PrivateKey, PublicKey, long_exponent_bits
from vfl_cli.errors import EncodingOverflow

__all__ = ["RowLayout", "bin_sums", "cumulative", "encrypt_rows", "from_own_state", "pack_sums",
           "subtract"]

#: Bits per window of the CRT fixed-base tables: 19 products modulo ``p^2`` and ``q^2`` per
#: encryption at 2048 bits instead of 28 with 8-bit windows; the tables (2 x 19 x 4096 values,
#: about 40 MB, 0.3 s to build) are built once per process.
CRT_WINDOW = 12

_CRT_TABLES: dict[tuple[int, int, int, int], tuple[list[list[mpz]], list[list[mpz]]]] = {}


@dataclass(frozen=True)
class RowLayout:
    """Slots of a row's plaintext: ``[count, g_0, h_0, g_1, h_1, ...]`` from the lowest bits.

    ``g`` is carried as ``round(g 2^precision) + g_offset`` (non-negative), ``h`` as
    ``round(h 2^precision)`` (``h >= 0``); each slot holds the sum over ``rows`` rows. The count
    slot is only as wide as a count of ``rows`` needs (every packed candidate is shorter, so
    more fit one ciphertext and packing needs fewer squarings).
    """

    classes: int
    precision: int
    g_bits: int  # |g| <= 2**g_bits and h <= 2**g_bits
    rows: int

    @property
    def slot_bits(self) -> int:
        return self.precision + self.g_bits + 2 + max(1, math.ceil(math.log2(self.rows + 1)))

    @property
    def count_bits(self) -> int:
        return 1 + max(1, math.ceil(math.log2(self.rows + 1)))

    @property
    def slots(self) -> int:
        return 1 + 2 * self.classes

    @property
    def bits(self) -> int:
        return self.count_bits + self.slot_bits * 2 * self.classes

    def shift(self, j: int) -> int:
        """Bit position of slot ``j`` (0: the count)."""
        return 0 if j == 0 else self.count_bits + self.slot_bits * (j - 1)

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
        shifts = [self.shift(j) for j in range(self.slots)]
        for r in range(len(g)):
            v = 1
            for k in range(self.classes):
                v |= int(gq[r, k]) << shifts[1 + 2 * k]
                v |= int(hq[r, k]) << shifts[2 + 2 * k]
            out.append(v)
        return out

    def decode(self, sums: Sequence[int]) -> np.ndarray:
        """Sums of rows back to ``(count, G_0, H_0, ...)`` per value (float64, values x slots)."""
        mask, cmask = (1 << self.slot_bits) - 1, (1 << self.count_bits) - 1
        shifts = [self.shift(j) for j in range(self.slots)]
        out = np.empty((len(sums), self.slots))
        for i, v in enumerate(sums):
            v = int(v)
            if v >> self.bits:
                raise EncodingOverflow("a histogram sum overflows its slots")
            fields = [(v >> sh) & (mask if j else cmask) for j, sh in enumerate(shifts)]
            c = fields[0]
            out[i, 0] = c
            for k in range(self.classes):
                out[i, 1 + 2 * k] = (fields[1 + 2 * k] - c * self.g_offset) / 2**self.precision
                out[i, 2 + 2 * k] = fields[2 + 2 * k] / 2**self.precision
        return out


def encrypt_rows(public: PublicKey, plains: list[int], *, private: PrivateKey | None = None,
                 n_jobs: int | None = None) -> EncryptedArray:
    """Fresh encryptions of the row plaintexts (exponent 0).

    With ``private`` (the key holder encrypting under its own key) the DJN randomisers
    ``h**a`` are computed modulo ``p^2`` and ``q^2`` and joined by the CRT, with an exponent
    ``a`` of whole :data:`CRT_WINDOW`-bit windows (228 bits at 2048, where
    :func:`~vfl_cli.crypto.paillier_array.encrypt` draws 224): less work, no shorter exponent.
    """
    if any(v.bit_length() >= public.n.bit_length() - 2 for v in plains):
        raise EncodingOverflow("a packed row does not fit the key; use fewer classes or a larger key")
    if private is None or public.h is None:
        zeros = encrypt(public, np.zeros(len(plains)), exponent=0, n_jobs=n_jobs)
        N, nsq = mpz(public.n), mpz(public.nsquare)
        values = [_k.add_plain(c, mpz(v), N, nsq) for c, v in zip(zeros.raw_ciphertexts(), plains,
                                                                   strict=True)]
        return EncryptedArray(public, values, (len(plains),), 0, fresh=True)
    private.check_key(public)
    p, q = private._p, private._q  # the factors stay in this process and its own workers
    tasks = [(p, q, public.h, public.short_exponent_bits, plains[s])
             for s in _par.split(len(plains), n_jobs, min_chunk=512, per_worker=1)]
    if len(tasks) <= 1 or _fork_ok():
        _crt_tables(p, q, public.h, public.short_exponent_bits)  # once, shared by forked workers
    out: list[mpz] = []
    for blob in _run(w_encrypt_crt, tasks, n_jobs):
        out.extend(_k.from_blob(blob, public.width))
    return EncryptedArray(public, out, (len(plains),), 0, fresh=True)


def _run(func: Callable[..., bytes], tasks: Sequence[tuple[Any, ...]], n_jobs: int | None
         ) -> list[bytes]:
    """Run the chunks in forked workers where that is safe, else as the engine runs them.

    A ``vfl`` step is a fresh process: joblib's loky workers would each import numpy, gmpy2 and
    the engine again (about 0.3 s of CPU per worker, per step). Forked workers share what this
    process has loaded and start at once. Fork only on Linux, from a single-threaded process
    (as :mod:`vfl_cli.crypto.ecdh` does) and under joblib's default backend, so a Dask cluster
    (:func:`~vfl_cli.crypto.parallel.use_dask`) still gets the chunks.
    """
    if len(tasks) <= 1 or not _fork_ok():
        return _par.run(func, tasks, n_jobs)
    with multiprocessing.get_context("fork").Pool(len(tasks)) as pool:
        return pool.starmap(func, tasks)


def _fork_ok() -> bool:
    if not sys.platform.startswith("linux") or threading.active_count() != 1:
        return False
    import joblib

    return type(joblib.parallel.get_active_backend()[0]).__name__ == "LokyBackend"


def _crt_tables(p: int, q: int, h: int, ebits: int) -> tuple[list[list[mpz]], list[list[mpz]]]:
    """Fixed-base tables of ``h`` modulo ``p^2`` and ``q^2``, :data:`CRT_WINDOW` bits per
    window (cached per process; built before forking, so the workers share them)."""
    key = (p, q, h, ebits)
    if key not in _CRT_TABLES:
        tables = []
        for m in (mpz(p) ** 2, mpz(q) ** 2):
            base, rows = mpz(h) % m, []
            for _ in range(-(-ebits // CRT_WINDOW)):
                row = [mpz(1), base]
                for _j in range(2, 1 << CRT_WINDOW):
                    row.append(row[-1] * base % m)
                rows.append(row)
                base = row[-1] * base % m
            tables.append(rows)
        if len(_CRT_TABLES) >= 2:
            _CRT_TABLES.pop(next(iter(_CRT_TABLES)))
        _CRT_TABLES[key] = (tables[0], tables[1])
    return _CRT_TABLES[key]


def w_encrypt_crt(p: int, q: int, h: int, ebits: int, plains: list[int]) -> bytes:
    """Worker: ``(1 + m n) h**a mod n^2`` for a fresh ``a`` of at least ``ebits`` bits (whole
    windows), ``h**a`` by the CRT."""
    tp, tq = _crt_tables(p, q, h, ebits)
    P2, Q2 = mpz(p) ** 2, mpz(q) ** 2
    N = mpz(p) * q
    nsq = N * N
    p2_inv = gmpy2.invert(P2 % Q2, Q2)
    nwin = len(tp)
    # the window digits of each fresh exponent a: uniform CRT_WINDOW-bit values
    rnd = np.frombuffer(os.urandom(2 * nwin * len(plains)), dtype=np.uint16) & ((1 << CRT_WINDOW) - 1)
    out = []
    for m, d in zip(plains, rnd.reshape(len(plains), nwin).tolist(), strict=True):
        xp, xq = tp[0][d[0]], tq[0][d[0]]
        for t in range(1, nwin):
            xp = xp * tp[t][d[t]] % P2
            xq = xq * tq[t][d[t]] % Q2
        x = xp + P2 * ((xq - xp) * p2_inv % Q2)
        out.append(_k.add_plain(x, mpz(m), N, nsq))
    return _k.to_blob(out, _k.width_of(nsq))


def bin_sums(rows: EncryptedArray, index: np.ndarray, total: int, *,
             n_jobs: int | None = None) -> EncryptedArray:
    """Sum of the rows in every bin: row ``r`` is added to every bin of ``index[r]`` (not fresh).

    ``index`` is ``rows x columns`` with values in ``0..total-1`` (each column's bins at its own
    offset, one block per node when several nodes are built at once), no matrix: rows are
    multiplied per distinct combination of a group of columns' bins, then each combination into
    its bins (:func:`column_groups`; default_credit's 10 passive columns at 2048 bits: 0.51 s of
    CPU for 12,000 rows instead of 1.26 s for one product per row and column, the same bytes).
    Chunks of rows go to the workers; their partial sums are multiplied.
    """
    index = np.asarray(index, dtype=np.int64).reshape(rows.size, -1)
    if index.size and (index.min() < 0 or index.max() >= total):
        raise EncodingOverflow("bin indices outside the bins")
    if rows.size == 0:
        return _zeros(rows.public, total)
    width, nsq = rows.public.width, mpz(rows.public.nsquare)
    cts = rows.raw_ciphertexts()
    slices = _par.split(rows.size, n_jobs, min_chunk=1024,
                        min_items=max(1024, 20_000 // max(1, index.shape[1])))
    tasks = [(rows.public.n, _k.to_blob(cts[s], width), index[s], total) for s in slices]
    acc: list[mpz] = []
    for blob in _run(w_bin_sums, tasks, n_jobs):
        part = _k.from_blob(blob, width)
        acc = [a * b % nsq for a, b in zip(acc, part, strict=True)] if acc else part
    return EncryptedArray(rows.public, acc, (total,), rows.exponent)


def w_bin_sums(n: int, blob: bytes, index: np.ndarray, total: int) -> bytes:
    """Worker: the product of the ciphertexts of ``blob`` falling in each of ``total`` bins."""
    nsq = mpz(n) * n
    width = _k.width_of(nsq)
    cts = _k.from_blob(blob, width)
    acc: list[mpz | None] = [None] * total  # None: no row yet (saves a product by 1)
    for cols in column_groups(index):
        combo, lines = _combos(index[:, cols])
        sums: list[mpz | None] = [None] * len(lines)
        for c, u in zip(cts, combo.tolist(), strict=True):
            s = sums[u]
            sums[u] = c if s is None else s * c % nsq
        for s, line in zip(sums, lines.tolist(), strict=True):
            for j in line:
                a = acc[j]
                acc[j] = s if a is None else a * s % nsq
    return _k.to_blob([mpz(1) if a is None else a for a in acc], width)


def column_groups(index: np.ndarray) -> list[list[int]]:
    """Columns summed together: rows are first multiplied per distinct combination of the
    group's bins, then each combination into each of its bins.

    A group of ``k`` columns with ``u`` distinct combinations costs about ``rows + k u``
    products instead of ``k rows``: a column joins the group while that is cheaper than a
    group of its own (the same ciphertext products, in another order).
    """
    rows, cols = index.shape
    groups: list[list[int]] = []
    key, u = np.zeros(rows, dtype=np.int64), 1
    for j in range(cols):
        vals, rank = np.unique(index[:, j], return_inverse=True)
        joint = np.unique(key * len(vals) + rank.reshape(-1), return_inverse=True)[1].reshape(-1)
        u_joint = int(joint.max(initial=-1)) + 1
        k = len(groups[-1]) if groups else 0
        if groups and (k + 1) * u_joint < k * u + rows + len(vals):
            groups[-1].append(j)
            key, u = joint, u_joint
        else:
            groups.append([j])
            key, u = rank.reshape(-1).astype(np.int64), len(vals)
    return groups


def _combos(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each row's combination number, the bins of each combination) of ``block``'s rows."""
    lines, combo = np.unique(block, axis=0, return_inverse=True)
    return combo.reshape(-1), lines


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


def pack_sums(x: EncryptedArray, value_bits: int, *, n_jobs: int | None = None) -> Packed:
    """:func:`~vfl_cli.crypto.packing.pack` for sums going to the key holder, in the workers.

    The same layout (``SlotLayout.for_value_bits``), so ``decrypt_packed`` reads it; Horner's
    rule and the re-randomisation (a fresh ``h**a`` with a long DJN exponent, safe towards the
    key holder: :func:`~vfl_cli.crypto.paillier_array.rerandomize`) run chunk by chunk.
    """
    public = x.public
    if public.h is None:
        from vfl_cli.crypto.packing import pack

        return pack(x, value_bits=value_bits, n_jobs=n_jobs)
    layout = SlotLayout.for_value_bits(public.bits, value_bits)
    if x.bound is not None and x.bound > 1 << value_bits:
        raise EncodingOverflow(f"values may need more than value_bits={value_bits}")
    ebits = long_exponent_bits(public.bits)
    cts = x.raw_ciphertexts()
    tasks = []
    for s in _par.split(layout.ciphertexts(x.size), n_jobs, min_chunk=8, min_items=48):
        lo, hi = s.start * layout.slots, min(x.size, s.stop * layout.slots)
        tasks.append((public.n, public.h, ebits, _k.to_blob(cts[lo:hi], public.width),
                      layout.slots, layout.slot_bits, layout.offset))
    out: list[mpz] = []
    for blob in _run(w_pack, tasks, n_jobs):
        out.extend(_k.from_blob(blob, public.width))
    packed = EncryptedArray(public, out, (len(out),), x.exponent, fresh=True)
    return Packed(packed, x.size, x.shape, x.exponent, layout.slot_bits, layout.slots,
                  layout.offset)


def w_pack(n: int, h: int, ebits: int, blob: bytes, slots: int, slot_bits: int, offset: int
           ) -> bytes:
    """Worker: ``slots`` values per ciphertext (the first lowest), plus the offset, re-randomised."""
    N = mpz(n)
    nsq = N * N
    width = _k.width_of(nsq)
    cts = _k.from_blob(blob, width)
    layout = SlotLayout(slot_bits, slots, offset)
    groups = [cts[i: i + slots] for i in range(0, len(cts), slots)]
    obf = _k.short_obfuscators(n, h, ebits, len(groups))
    shift = mpz(1) << slot_bits
    out = []
    for group, r in zip(groups, obf, strict=True):
        acc = group[-1]
        for c in reversed(group[:-1]):
            acc = gmpy2.powmod(acc, shift, nsq) * c % nsq
        acc = _k.add_plain(acc, mpz(layout.offset_plaintext(len(group)) % N), N, nsq)
        out.append(acc * r % nsq)
    return _k.to_blob(out, width)


def from_own_state(public: PublicKey, data: bytes, count: int) -> EncryptedArray:
    """Ciphertexts this party stored in its own job state, checked when they first arrived.

    :meth:`EncryptedArray.from_bytes` checks every value (a product and a gcd modulo ``n``);
    a party's own state needs no second check on every step.
    """
    if len(data) != count * public.width:
        raise EncodingOverflow(f"stored ciphertexts: {len(data)} bytes for {count} values")
    return EncryptedArray(public, _k.from_blob(data, public.width), (count,), 0)
