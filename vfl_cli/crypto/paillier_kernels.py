"""Raw Paillier kernels: integer arithmetic on ciphertexts, written once, run in any process.

Everything here works on plain integers (gmpy2 ``mpz``) and bytes, never on the engine's
types, so that :mod:`vfl_cli.crypto.parallel` can ship chunks to worker processes (loky or
Dask) which import these functions by name. The public modules
(:mod:`~vfl_cli.crypto.paillier_keys`, :mod:`~vfl_cli.crypto.paillier_array`,
:mod:`~vfl_cli.crypto.paillier_matmul`, :mod:`~vfl_cli.crypto.packing`) cut their inputs into
chunks and call the ``w_*`` workers; nothing outside ``crypto/`` should import this module.

Per-process caches hold, for the last few keys, the fixed-base window table of the DJN
generator ``h`` and the CRT constants of a private key; every worker builds them once.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from typing import Any

import gmpy2
import numpy as np
from gmpy2 import mpz, powmod

from vfl_cli.crypto import encoding as _enc
from vfl_cli.errors import CryptoError

WINDOW = 8
"""Bits per fixed-base window for ``h**a``: one random byte per table lookup."""

_TABLES: dict[tuple[int, int, int], list[list[mpz]]] = {}
_PRIV: dict[tuple[int, int], tuple[mpz, ...]] = {}
_CACHE_KEYS = 4


# --------------------------------------------------------------------------------------------
# bytes


def to_blob(values: Sequence[Any], width: int) -> bytes:
    """Fixed-width big-endian bytes of non-negative integers."""
    return b"".join(mpz(v).to_bytes(width, "big") for v in values)


def from_blob(data: bytes, width: int) -> list[mpz]:
    """Integers written by :func:`to_blob`."""
    view = memoryview(data)
    return [mpz.from_bytes(view[i : i + width], "big") for i in range(0, len(data), width)]


def width_of(modulus: int) -> int:
    """Bytes needed for any residue of ``modulus``."""
    return (int(modulus).bit_length() + 7) // 8


# --------------------------------------------------------------------------------------------
# the modular tricks, written once


def add_plain(c: mpz, m: int, n: mpz, nsq: mpz) -> mpz:
    """``c * (1 + m n) mod n^2``: add plaintext ``m`` to ciphertext ``c``.

    ``(1 + m n) c = c + n (m c mod n)  (mod n^2)``: one product modulo ``n`` instead of one
    modulo ``n^2``, and a conditional subtraction instead of a reduction.
    """
    v = c + n * (m * c % n)
    return v - nsq if v >= nsq else v


def batch_invert(values: list[mpz], modulus: mpz) -> list[mpz]:
    """Montgomery's trick: all inverses for one inversion and three multiplications each.

    Raises:
        CryptoError: a value is not invertible (not a valid ciphertext).
    """
    if not values:
        return []
    prefix = [values[0]]
    for v in values[1:]:
        prefix.append(prefix[-1] * v % modulus)
    try:
        inv = gmpy2.invert(prefix[-1], modulus)
    except ZeroDivisionError:
        raise CryptoError(
            "a ciphertext is not invertible modulo n^2 (not a valid ciphertext)"
        ) from None
    out = [mpz(0)] * len(values)
    for i in range(len(values) - 1, 0, -1):
        out[i] = inv * prefix[i - 1] % modulus
        inv = inv * values[i] % modulus
    out[0] = inv
    return out


def product(values: Sequence[mpz], modulus: mpz) -> mpz:
    """``prod(values) mod modulus`` (a homomorphic sum of ciphertexts)."""
    acc = mpz(1)
    for c in values:
        acc = acc * c % modulus
    return acc


# --------------------------------------------------------------------------------------------
# per-process caches


def h_table(n: int, h: int, ebits: int) -> list[list[mpz]]:
    """Fixed-base table: ``table[t][j] = h**(j * 256**t) mod n^2`` for ``ebits // 8`` rows."""
    key = (n, h, ebits)
    table = _TABLES.get(key)
    if table is None:
        nsq = mpz(n) * n
        base = mpz(h)
        table = []
        for _ in range(ebits // WINDOW):
            row = [mpz(1), base]
            for _j in range(2, 1 << WINDOW):
                row.append(row[-1] * base % nsq)
            table.append(row)
            base = row[-1] * base % nsq  # base**256
        if len(_TABLES) >= _CACHE_KEYS:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = table
    return table


def priv_consts(p: int, q: int) -> tuple[mpz, ...]:
    """CRT decryption constants ``(P, Q, P^2, Q^2, hp, hq, P^-1 mod Q)`` of a private key."""
    key = (p, q)
    consts = _PRIV.get(key)
    if consts is None:
        P, Q = mpz(p), mpz(q)
        P2, Q2 = P * P, Q * Q
        n = P * Q
        hp = gmpy2.invert((powmod(n + 1, P - 1, P2) - 1) // P, P)
        hq = gmpy2.invert((powmod(n + 1, Q - 1, Q2) - 1) // Q, Q)
        consts = (P, Q, P2, Q2, hp, hq, gmpy2.invert(P, Q))
        if len(_PRIV) >= _CACHE_KEYS:
            _PRIV.pop(next(iter(_PRIV)))
        _PRIV[key] = consts
    return consts


# --------------------------------------------------------------------------------------------
# randomisers


def strong_obfuscators(n: int, count: int) -> list[mpz]:
    """``count`` values ``r**n mod n^2`` with ``r`` uniform in ``Z_n^*`` (textbook Paillier)."""
    N = mpz(n)
    nsq = N * N
    out = []
    for _ in range(count):
        r = mpz(secrets.randbelow(n - 1) + 1)
        out.append(powmod(r, N, nsq))
    return out


def short_obfuscators(n: int, h: int, ebits: int, count: int) -> list[mpz]:
    """``count`` values ``h**a mod n^2`` for fresh random ``ebits``-bit exponents ``a`` (DJN)."""
    nsq = mpz(n) * n
    table = h_table(n, h, ebits)
    nwin = len(table)
    # The random bytes are the window digits of the fresh exponent a, one per table row.
    rnd = os.urandom(nwin * count)
    out = []
    for k in range(count):
        digits = rnd[k * nwin : (k + 1) * nwin]
        acc = table[0][digits[0]]
        for t in range(1, nwin):
            acc = acc * table[t][digits[t]] % nsq
        out.append(acc)
    return out


# --------------------------------------------------------------------------------------------
# chunk workers (module level so that loky and Dask workers import them by name)


def w_encrypt(n: int, h: int | None, ebits: int, values: np.ndarray, exponent: int) -> bytes:
    """Encrypt one chunk of real values: ``(1 + m n) * h**a`` (or ``* r**n`` without ``h``)."""
    N = mpz(n)
    nsq = N * N
    residues, _ = _enc.encode(values, n, exponent)
    if h is None:
        obf = strong_obfuscators(n, len(residues))
    else:
        obf = short_obfuscators(n, h, ebits, len(residues))
    out = [add_plain(r, m, N, nsq) for m, r in zip(residues, obf, strict=True)]
    return to_blob(out, width_of(nsq))


def w_obfuscate(n: int, blob: bytes | None, count: int) -> bytes:
    """Multiply a chunk by uniform ``r**n`` (or return ``count`` of them when ``blob`` is None)."""
    N = mpz(n)
    nsq = N * N
    width = width_of(nsq)
    obf = strong_obfuscators(n, count)
    if blob is None:
        return to_blob(obf, width)
    return to_blob([c * r % nsq for c, r in zip(from_blob(blob, width), obf, strict=True)], width)


def w_obfuscate_short(n: int, h: int, ebits: int, blob: bytes) -> bytes:
    """Multiply a chunk by fresh ``h**a`` with ``ebits``-bit exponents ``a``."""
    nsq = mpz(n) * n
    width = width_of(nsq)
    cs = from_blob(blob, width)
    obf = short_obfuscators(n, h, ebits, len(cs))
    return to_blob([c * r % nsq for c, r in zip(cs, obf, strict=True)], width)


def w_powmod(n: int, blob: bytes, exps: list[int]) -> bytes:
    """``c_i ** e_i`` for signed ``e_i`` (one shared batch inversion for the negative ones)."""
    N = mpz(n)
    nsq = N * N
    width = width_of(nsq)
    cs = from_blob(blob, width)
    if len(exps) == 1 and len(cs) != 1:
        exps = exps * len(cs)
    out = [powmod(c, abs(e), nsq) for c, e in zip(cs, exps, strict=True)]
    neg = [i for i, e in enumerate(exps) if e < 0]
    if neg:
        invs = batch_invert([out[i] for i in neg], nsq)
        for i, v in zip(neg, invs, strict=True):
            out[i] = v
    return to_blob(out, width)


def w_decrypt(p: int, q: int, blob: bytes) -> bytes:
    """CRT decryption of one chunk to residues modulo ``n``."""
    P, Q, P2, Q2, hp, hq, p_inv_q = priv_consts(p, q)
    n = P * Q
    cs = from_blob(blob, width_of(n * n))
    out = []
    for c in cs:
        mp = (powmod(c % P2, P - 1, P2) - 1) // P * hp % P
        mq = (powmod(c % Q2, Q - 1, Q2) - 1) // Q * hq % Q
        out.append(mp + (mq - mp) * p_inv_q % Q * P)
    return to_blob(out, width_of(n))


# --------------------------------------------------------------------------------------------
# multi-exponentiation


def signed_digits(x: np.ndarray, c: int) -> np.ndarray:
    """Signed base-``2**c`` digits of an int64 array.

    ``x = sum_t D[t] * 2**(c t)`` with ``|D| <= 2**(c-1)``. Needs ``c >= 2``: with one-bit
    windows the carry rule below never settles (every digit 1 becomes -1 plus a carry).
    """
    if c < 2:
        raise ValueError(f"signed digits need windows of at least 2 bits, not {c}")
    mag = np.abs(x)
    sign = np.where(x < 0, -1, 1)
    top = int(mag.max()) if mag.size else 0
    windows = max(1, -(-(top.bit_length() + 1) // c))
    half, maskc = 1 << (c - 1), (1 << c) - 1
    digits = []
    carry = np.zeros_like(mag)
    t = 0
    while t < windows or np.any(carry):
        d = ((mag >> (c * t)) & maskc) + carry if c * t < 63 else carry.copy()
        carry = (d >= half).astype(np.int64)
        digits.append((d - (carry << c)) * sign)
        t += 1
    return np.stack(digits)


def column_digits(x: np.ndarray) -> tuple[int, np.ndarray]:
    """Pick the window width of one column from its data, and return its signed digits.

    The cost of the bucket method is, per window, one multiplication per non-zero digit plus
    two per bucket up to the largest digit. Counting both for each width on the actual digits
    exploits whatever the column holds: integer-valued or binary features (zero low windows),
    heavy tails (a sparse top window), zeros.
    """

    def cost(digits: np.ndarray) -> int:
        return int(np.count_nonzero(digits)) + 2 * int(np.abs(digits).max(axis=1).sum())

    best_c, best = 4, signed_digits(x, 4)
    best_cost = cost(best)
    for c in range(5, 17):
        digits = signed_digits(x, c)
        if cost(digits) < best_cost:
            best_c, best, best_cost = c, digits, cost(digits)
    return best_c, best


def _bucket_total(both: list[mpz], sel: list[int], absd: np.ndarray, c: int, nsq: mpz) -> mpz:
    """``prod_u bucket_u ** u`` for one window, by running products from the top bucket."""
    buckets: list[mpz | None] = [None] * ((1 << (c - 1)) + 1)
    for u, b in zip(absd.tolist(), sel, strict=True):
        cur = buckets[u]
        buckets[u] = both[b] if cur is None else cur * both[b] % nsq
    running: mpz | None = None
    total: mpz | None = None
    for u in range(int(absd.max()), 0, -1):  # the top window often uses few buckets
        bu = buckets[u]
        if bu is not None:
            running = bu if running is None else running * bu % nsq
        if running is not None:
            total = running if total is None else total * running % nsq
    return total if total is not None else mpz(1)


def pippenger(bases: list[mpz], invs: list[mpz], digits: np.ndarray, c: int, nsq: mpz) -> mpz:
    """``prod_i bases[i] ** x_i`` from signed digits ``digits[t, i]`` (bucket method)."""
    both = bases + invs
    rows = len(bases)
    acc: mpz | None = None
    for t in range(digits.shape[0] - 1, -1, -1):
        if acc is not None:
            acc = powmod(acc, 1 << c, nsq)
        d = digits[t]
        nz = np.flatnonzero(d)
        if nz.size == 0:
            continue
        dn = d[nz]
        sel = (nz + rows * (dn < 0)).tolist()
        total = _bucket_total(both, sel, np.abs(dn), c, nsq)
        acc = total if acc is None else acc * total % nsq
    return acc if acc is not None else mpz(1)


def w_plain_matmul(n: int, blob: bytes, cols: int, xenc: np.ndarray) -> bytes:
    """Partial ``X[:, rows] @ E[rows, :]`` for one chunk of rows; ``xenc`` is ``(k, rows)``."""
    N = mpz(n)
    nsq = N * N
    width = width_of(nsq)
    cs = from_blob(blob, width)
    chosen = [column_digits(xenc[j]) for j in range(xenc.shape[0])]
    # signed digits of positive values can be negative too: inverses are needed if any is
    need_inv = any(bool(np.any(d < 0)) for _, d in chosen)
    out = []
    for col in range(cols):
        bases = cs[col::cols]
        invs = batch_invert(bases, nsq) if need_inv else []
        for c, digits in chosen:
            out.append(pippenger(bases, invs, digits, c, nsq))
    # out is ordered (col, j); return (j, col)
    k = xenc.shape[0]
    ordered = [out[col * k + j] for j in range(k) for col in range(cols)]
    return to_blob(ordered, width)


def _power_rows(bases: Sequence[mpz], half: int, nsq: mpz) -> list[list[mpz]]:
    """``[b**0, b**1, ..., b**half]`` for every base ``b``."""
    rows = []
    for base in bases:
        row = [mpz(1), base]
        for _ in range(half - 1):
            row.append(row[-1] * base % nsq)
        rows.append(row)
    return rows


def _straus(pos: list[list[mpz]], neg: list[list[mpz]], dcol: np.ndarray, c: int, nsq: mpz) -> mpz:
    """One output of Straus' method: shared squarings, one lookup per non-zero digit."""
    acc: mpz | None = None
    for t in range(dcol.shape[0] - 1, -1, -1):
        if acc is not None:
            acc = powmod(acc, 1 << c, nsq)
        for j, u in enumerate(dcol[t].tolist()):
            if u:
                f = pos[j][u] if u > 0 else neg[j][-u]
                acc = f if acc is None else acc * f % nsq
    return acc if acc is not None else mpz(1)


def w_enc_matmul(n: int, blob: bytes, k: int, wenc: np.ndarray) -> bytes:
    """``E[rows, :] @ W`` for one chunk of rows with Straus' shared squarings per output."""
    N = mpz(n)
    nsq = N * N
    width = width_of(nsq)
    cs = from_blob(blob, width)
    m = wenc.shape[1]
    top = int(np.abs(wenc).max()) if wenc.size else 0
    bits = top.bit_length() + 1

    def cost(c: int) -> int:
        return int(k * (1 << c) + m * (-(-bits // c)) * (k + c))

    c = min(range(2, 9), key=cost)  # 1-bit windows: see signed_digits
    digits = np.stack([signed_digits(wenc[:, col], c) for col in range(m)])  # (m, T, k)
    half = 1 << (c - 1)
    need_inv = bool(np.any(digits < 0))
    invs = batch_invert(cs, nsq) if need_inv else []
    out: list[mpz] = []
    for i in range(len(cs) // k):
        pos = _power_rows(cs[i * k : (i + 1) * k], half, nsq)
        neg = _power_rows(invs[i * k : (i + 1) * k], half, nsq) if need_inv else []
        out.extend(_straus(pos, neg, digits[col], c, nsq) for col in range(m))
    return to_blob(out, width)
