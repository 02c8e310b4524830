"""A fast vectorised Paillier engine on python-paillier (phe) keys.

This is the only module of the project that imports :mod:`phe`. Keys are phe keys (plus the
public DJN generator ``h``), encodings are phe's base-16 ``EncodedNumber`` with the fixed
exponent :data:`EXPONENT`, and ciphertexts are phe ciphertexts: an engine ciphertext decrypts
with ``phe.PaillierPrivateKey`` (:meth:`EncryptedArray.to_phe`) and phe's ciphertexts enter the
engine with :meth:`EncryptedArray.from_phe`.

Where the speed comes from (details and the security argument in ``docs/crypto.md``):

* encryption uses the Damgard-Jurik-Nielsen short-exponent form ``(1 + m n) * h**a mod n^2``
  with ``h = -x**(2n) mod n^2`` published in the public key, a fresh random ``a`` of twice the
  key's security level in bits, and fixed-base window tables for ``h`` built once per key and
  process: about 28 modular multiplications instead of a 2048-bit exponentiation;
* decryption is CRT with gmpy2, in parallel;
* ``X @ [[d]]`` is a signed-digit bucket (Pippenger) multi-exponentiation sharing one batch
  inversion of the bases, not one exponentiation per element;
* packing puts several fixed-point slots in one plaintext so that a gradient costs one
  decryption; headroom is derived from tracked bounds and checked on both sides;
* chunks run through :mod:`vfl_cli.crypto.parallel` (joblib: local cores or a Dask cluster).

Who may see which ciphertext: outputs of :func:`encrypt`, :func:`mask`, :func:`rerandomize` and
:func:`pack` are safe to send to anyone (``EncryptedArray.fresh``). Results of arithmetic
(``+``, ``*``, :func:`plain_matmul`, :func:`enc_matmul`, ``sum``) carry randomness that is a
deterministic function of their inputs' randomness (the key holder can recover it and learn
about the plaintext operands used), so they must go through :func:`mask` (or
:func:`rerandomize`) before they leave the party; :func:`mask` re-randomises with a uniform
``r**n``, not the short-exponent form, because its output goes to the key holder.
"""

from __future__ import annotations

import binascii
import hashlib
import math
import os
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
import numpy as np
import phe
from gmpy2 import mpz, powmod
from phe.util import base64_to_int, int_to_base64

from vfl_cli.crypto import encoding as _enc
from vfl_cli.crypto import parallel as _par
from vfl_cli.errors import CryptoError, EncodingOverflow, InvalidArtifact, KeyMismatch

EXPONENT = _enc.EXPONENT

GUARD_BITS = 2
"""Spare bits on top of every packed slot: an overflowing slot is detected, not carried."""

MIN_OBFUSCATE_SMALL_KEY = 128  # below 1536-bit keys, obfuscators are cheap: stay in-process
_WINDOW = 8  # bits per fixed-base window for h**a: one random byte per table lookup

__all__ = [
    "EXPONENT",
    "EncryptedArray",
    "Mask",
    "ObfuscatorPool",
    "Packed",
    "PrivateKey",
    "PublicKey",
    "concatenate",
    "decrypt_packed",
    "enc_matmul",
    "encrypt",
    "generate_keypair",
    "mask",
    "pack",
    "plain_matmul",
    "rerandomize",
    "security_bits",
    "short_exponent_bits",
    "unmask",
    "unpack",
]


# --------------------------------------------------------------------------------------------
# parameters


def security_bits(modulus_bits: int) -> int:
    """Symmetric security level of a Paillier modulus (NIST SP 800-57 factoring estimates)."""
    if modulus_bits < 1536:
        return 80
    if modulus_bits < 3072:
        return 112
    if modulus_bits < 7680:
        return 128
    if modulus_bits < 15360:
        return 192
    return 256


def short_exponent_bits(modulus_bits: int) -> int:
    """Bit length of the DJN short exponent ``a``: twice the security level.

    Generic (Pollard lambda / baby-step giant-step) attacks on an exponent of ``2k`` bits cost
    ``2**k`` group operations; 2048-bit keys use 224 bits, 3072-bit keys 256 bits.
    """
    return 2 * security_bits(modulus_bits)


# --------------------------------------------------------------------------------------------
# byte helpers


def _to_blob(values: Sequence[Any], width: int) -> bytes:
    return b"".join(mpz(v).to_bytes(width, "big") for v in values)


def _from_blob(data: bytes, width: int) -> list[mpz]:
    view = memoryview(data)
    return [mpz.from_bytes(view[i : i + width], "big") for i in range(0, len(data), width)]


def _width(modulus: int) -> int:
    return (int(modulus).bit_length() + 7) // 8


def _b64(x: int) -> str:
    return str(int_to_base64(int(x)))


def _unb64(d: dict[str, Any], member: str, what: str) -> int:
    try:
        return int(base64_to_int(d[member]))
    except KeyError:
        raise InvalidArtifact(f"{what}: member {member!r} is missing") from None
    except (TypeError, ValueError, binascii.Error):
        raise InvalidArtifact(f"{what}: member {member!r} is not base64url") from None


# --------------------------------------------------------------------------------------------
# keys


class PublicKey:
    """A phe public key plus the DJN generator ``h`` (an ``n``-th residue modulo ``n^2``).

    Attributes:
        n, nsquare: the modulus and its square.
        h: ``-x**(2n) mod n^2`` for a secret random ``x``, or ``None`` (then encryption uses the
            slow textbook ``r**n``, as for a key loaded from a pheutil JWK without ``h``).
        bits: bit length of ``n``.
        phe: the wrapped :class:`phe.PaillierPublicKey`.
        fingerprint: hex SHA-256 of ``b"vfl-paillier-v1\\0"``, then ``n`` and ``h`` each as a
            4-byte big-endian length followed by big-endian bytes (``h`` absent: length 0).
    """

    def __init__(self, n: int, h: int | None = None) -> None:
        n = int(n)
        if n < 3 or n % 2 == 0:
            raise CryptoError("a Paillier modulus must be an odd integer")
        self.n = n
        self.nsquare = n * n
        self.bits = n.bit_length()
        if h is not None:
            h = int(h)
            if not 1 < h < self.nsquare or math.gcd(h, n) != 1:
                raise CryptoError("the DJN generator h is not a unit modulo n^2")
        self.h = h
        self.phe = phe.PaillierPublicKey(n)
        self.max_int = int(self.phe.max_int)
        self.width = _width(self.nsquare)
        self.short_exponent_bits = short_exponent_bits(self.bits)
        digest = hashlib.sha256(b"vfl-paillier-v1\0")
        for part in (n, h):
            raw = b"" if part is None else part.to_bytes(_width(part), "big")
            digest.update(len(raw).to_bytes(4, "big") + raw)
        self.fingerprint = digest.hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.n, self.h) == (other.n, other.h)

    def __hash__(self) -> int:
        return hash((self.n, self.h))

    def __repr__(self) -> str:
        return f"PublicKey(bits={self.bits}, fingerprint={self.fingerprint[:16]}…)"

    def to_jwk(self) -> dict[str, Any]:
        """The pheutil public JWK, plus ``"vfl_h"`` (base64url ``h``) when ``h`` is set."""
        out: dict[str, Any] = {
            "kty": "DAJ",
            "alg": "PAI-GN1",
            "key_ops": ["encrypt"],
            "n": _b64(self.n),
            "kid": self.fingerprint,
        }
        if self.h is not None:
            out["vfl_h"] = _b64(self.h)
        return out

    @classmethod
    def from_jwk(cls, d: dict[str, Any]) -> PublicKey:
        """Load a public JWK written by :meth:`to_jwk` or by ``pheutil`` (no ``h``: slow path).

        Raises:
            InvalidArtifact: the dictionary is not a Paillier public JWK.
        """
        what = "Paillier public key"
        if not isinstance(d, dict) or d.get("kty") != "DAJ":
            raise InvalidArtifact(f'{what}: "kty" must be "DAJ"')
        if d.get("alg", "PAI-GN1") != "PAI-GN1":
            raise InvalidArtifact(f'{what}: "alg" must be "PAI-GN1", got {d.get("alg")!r}')
        n = _unb64(d, "n", what)
        h = _unb64(d, "vfl_h", what) if "vfl_h" in d else None
        try:
            return cls(n, h)
        except CryptoError as exc:
            raise InvalidArtifact(f"{what}: {exc}") from None


class PrivateKey:
    """A phe private key with fast CRT decryption of whole arrays.

    Attributes:
        public: the matching :class:`PublicKey`.
        phe: the wrapped :class:`phe.PaillierPrivateKey`.
    """

    def __init__(self, public: PublicKey, p: int, q: int) -> None:
        p, q = int(p), int(q)
        if p * q != public.n or p == q:
            raise CryptoError("the primes p, q do not match the public modulus")
        self.public = public
        self.phe = phe.PaillierPrivateKey(public.phe, p, q)
        self._p, self._q = p, q

    def __repr__(self) -> str:  # never show p or q
        return f"PrivateKey(public={self.public!r})"

    def to_jwk(self) -> dict[str, Any]:
        """The pheutil private JWK (``p``, ``q`` and the public JWK under ``"pub"``)."""
        return {
            "kty": "DAJ",
            "key_ops": ["decrypt"],
            "p": _b64(self._p),
            "q": _b64(self._q),
            "pub": self.public.to_jwk(),
            "kid": self.public.fingerprint,
        }

    @classmethod
    def from_jwk(cls, d: dict[str, Any]) -> PrivateKey:
        """Load a private JWK written by :meth:`to_jwk` or by ``pheutil``.

        Raises:
            InvalidArtifact: not a Paillier private JWK, or ``p*q`` differs from ``n``.
        """
        what = "Paillier private key"
        if not isinstance(d, dict) or d.get("kty") != "DAJ":
            raise InvalidArtifact(f'{what}: "kty" must be "DAJ"')
        if "pub" not in d:
            raise InvalidArtifact(f'{what}: member "pub" is missing')
        public = PublicKey.from_jwk(d["pub"])
        p, q = _unb64(d, "p", what), _unb64(d, "q", what)
        try:
            return cls(public, p, q)
        except CryptoError as exc:
            raise InvalidArtifact(f"{what}: {exc}") from None

    def _check(self, x: EncryptedArray | Packed) -> None:
        public = x.public
        if public.n != self.public.n:
            raise KeyMismatch(
                f"the ciphertexts were encrypted under key {public.fingerprint[:16]}…, this "
                f"private key is {self.public.fingerprint[:16]}…"
            )

    def decrypt_raw(self, x: EncryptedArray, *, n_jobs: int | None = None) -> list[int]:
        """Decrypt to residues modulo ``n`` (flat, C order), e.g. masked values for a peer."""
        self._check(x)
        n = self.public.n
        nw = _width(n)
        tasks = [
            (self._p, self._q, _to_blob(x._c[s], self.public.width))
            for s in _par.split(len(x._c), n_jobs, min_chunk=8, min_items=256)
        ]
        out: list[int] = []
        for blob in _par.run(_w_decrypt, tasks, n_jobs):
            out.extend(int(v) for v in _from_blob(blob, nw))
        return out

    def decrypt(self, x: EncryptedArray, *, n_jobs: int | None = None) -> np.ndarray:
        """Decrypt to float64 values of the same shape.

        Raises:
            KeyMismatch: ``x`` is under another key.
            EncodingOverflow: a value overflowed the plaintext space or its tracked bound.
        """
        n = self.public.n
        ints = [_enc.signed(r, n) for r in self.decrypt_raw(x, n_jobs=n_jobs)]
        if x.bound is not None and any(abs(v) > x.bound for v in ints):
            raise EncodingOverflow("a decrypted value exceeds the bound tracked for its array")
        return _enc.decode(ints, x.exponent).reshape(x.shape)


def generate_keypair(bits: int = 2048) -> tuple[PublicKey, PrivateKey]:
    """Generate a phe Paillier keypair and the DJN generator ``h = -x**(2n) mod n^2``.

    Args:
        bits: bit length of ``n`` (2048 by default; refusing small keys is the CLI's job).
    """
    if bits < 128:
        raise CryptoError(f"a {bits}-bit Paillier key cannot hold fixed-point values")
    pub, priv = phe.generate_paillier_keypair(n_length=bits)
    n = int(pub.n)
    while True:
        x = secrets.randbelow(n - 2) + 2
        if math.gcd(x, n) == 1:
            break
    nsq = n * n
    # (-x^2)^n = -(x^(2n)) because n is odd; it is an n-th residue, so h**a is a valid
    # Paillier randomiser and phe decrypts engine ciphertexts unchanged.
    h = nsq - int(powmod(x, 2 * n, nsq))
    public = PublicKey(n, h)
    return public, PrivateKey(public, int(priv.p), int(priv.q))


# --------------------------------------------------------------------------------------------
# per-process caches (built once per key in every worker process)

_TABLES: dict[tuple[int, int, int], list[list[mpz]]] = {}
_PRIV: dict[tuple[int, int], tuple[mpz, ...]] = {}


def _h_table(n: int, h: int, ebits: int) -> list[list[mpz]]:
    """Fixed-base table: ``table[t][j] = h**(j * 256**t) mod n^2``."""
    key = (n, h, ebits)
    table = _TABLES.get(key)
    if table is None:
        nsq = mpz(n) * n
        base = mpz(h)
        table = []
        for _ in range(ebits // _WINDOW):
            row = [mpz(1), base]
            for _j in range(2, 1 << _WINDOW):
                row.append(row[-1] * base % nsq)
            table.append(row)
            base = row[-1] * base % nsq  # base**256
        if len(_TABLES) >= 4:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = table
    return table


def _priv_consts(p: int, q: int) -> tuple[mpz, ...]:
    key = (p, q)
    consts = _PRIV.get(key)
    if consts is None:
        P, Q = mpz(p), mpz(q)
        P2, Q2 = P * P, Q * Q
        n = P * Q
        hp = gmpy2.invert((powmod(n + 1, P - 1, P2) - 1) // P, P)
        hq = gmpy2.invert((powmod(n + 1, Q - 1, Q2) - 1) // Q, Q)
        consts = (P, Q, P2, Q2, hp, hq, gmpy2.invert(P, Q))
        if len(_PRIV) >= 4:
            _PRIV.pop(next(iter(_PRIV)))
        _PRIV[key] = consts
    return consts


def _batch_invert(values: list[mpz], modulus: mpz) -> list[mpz]:
    """Montgomery's trick: all inverses for one inversion and three multiplications each."""
    if not values:
        return []
    prefix = [values[0]]
    for v in values[1:]:
        prefix.append(prefix[-1] * v % modulus)
    try:
        inv = gmpy2.invert(prefix[-1], modulus)
    except ZeroDivisionError:
        raise CryptoError("a ciphertext is not invertible modulo n^2 (not a valid ciphertext)")
    out = [mpz(0)] * len(values)
    for i in range(len(values) - 1, 0, -1):
        out[i] = inv * prefix[i - 1] % modulus
        inv = inv * values[i] % modulus
    out[0] = inv
    return out


def _strong_obfuscators(n: int, count: int) -> list[mpz]:
    """``count`` values ``r**n mod n^2`` with ``r`` uniform in ``Z_n^*`` (textbook Paillier)."""
    N = mpz(n)
    nsq = N * N
    out = []
    for _ in range(count):
        r = mpz(secrets.randbelow(n - 1) + 1)
        out.append(powmod(r, N, nsq))
    return out


# --------------------------------------------------------------------------------------------
# chunk workers (module level so that loky and Dask workers import them by name)


def _w_encrypt(n: int, h: int | None, ebits: int, values: np.ndarray, exponent: int) -> bytes:
    N = mpz(n)
    nsq = N * N
    residues, _ = _enc.encode(values, n, exponent)
    width = _width(nsq)
    out = []
    if h is None:
        obf = _strong_obfuscators(n, len(residues))
        for m, r in zip(residues, obf):
            out.append((1 + m * N) * r % nsq)
        return _to_blob(out, width)
    table = _h_table(n, h, ebits)
    nwin = len(table)
    # The random bytes are the window digits of the fresh short exponent a, one per table row.
    rnd = os.urandom(nwin * len(residues))
    for k, m in enumerate(residues):
        digits = rnd[k * nwin : (k + 1) * nwin]
        acc = (1 + m * N) * table[0][digits[0]] % nsq
        for t in range(1, nwin):
            acc = acc * table[t][digits[t]] % nsq
        out.append(acc)
    return _to_blob(out, width)


def _w_obfuscate(n: int, blob: bytes | None, count: int) -> bytes:
    N = mpz(n)
    nsq = N * N
    width = _width(nsq)
    obf = _strong_obfuscators(n, count)
    if blob is None:
        return _to_blob(obf, width)
    return _to_blob([c * r % nsq for c, r in zip(_from_blob(blob, width), obf)], width)


def _w_powmod(n: int, blob: bytes, exps: list[int]) -> bytes:
    """``c_i ** e_i`` for signed ``e_i`` (one shared batch inversion for the negative ones)."""
    N = mpz(n)
    nsq = N * N
    width = _width(nsq)
    cs = _from_blob(blob, width)
    if len(exps) == 1 and len(cs) != 1:
        exps = exps * len(cs)
    out = [powmod(c, abs(e), nsq) for c, e in zip(cs, exps)]
    neg = [i for i, e in enumerate(exps) if e < 0]
    if neg:
        invs = _batch_invert([out[i] for i in neg], nsq)
        for i, v in zip(neg, invs):
            out[i] = v
    return _to_blob(out, width)


def _w_decrypt(p: int, q: int, blob: bytes) -> bytes:
    P, Q, P2, Q2, hp, hq, p_inv_q = _priv_consts(p, q)
    n = P * Q
    cs = _from_blob(blob, _width(n * n))
    out = []
    for c in cs:
        mp = (powmod(c % P2, P - 1, P2) - 1) // P * hp % P
        mq = (powmod(c % Q2, Q - 1, Q2) - 1) // Q * hq % Q
        out.append(mp + (mq - mp) * p_inv_q % Q * P)
    return _to_blob(out, _width(n))


def _signed_digits(x: np.ndarray, c: int) -> np.ndarray:
    """Signed base-``2**c`` digits of an int64 array.

    ``x = sum_t D[t] * 2**(c t)`` with ``|D| <= 2**(c-1)``.
    """
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


def _column_digits(x: np.ndarray) -> tuple[int, np.ndarray]:
    """Pick the window width of one column from its data, and return its signed digits.

    The cost of the bucket method is, per window, one multiplication per non-zero digit plus
    two per bucket up to the largest digit. Counting both for each width on the actual digits
    exploits whatever the column holds: integer-valued or binary features (zero low windows),
    heavy tails (a sparse top window), zeros.
    """

    def cost(digits: np.ndarray) -> int:
        return int(np.count_nonzero(digits)) + 2 * int(np.abs(digits).max(axis=1).sum())

    best_c, best = 4, _signed_digits(x, 4)
    best_cost = cost(best)
    for c in range(5, 17):
        digits = _signed_digits(x, c)
        if cost(digits) < best_cost:
            best_c, best, best_cost = c, digits, cost(digits)
    return best_c, best


def _pippenger(bases: list[mpz], invs: list[mpz], digits: np.ndarray, c: int, nsq: mpz) -> mpz:
    """``prod_i bases[i] ** x_i`` from signed digits ``digits[t, i]`` (bucket method)."""
    both = bases + invs
    rows = len(bases)
    half = 1 << (c - 1)
    acc = None
    for t in range(digits.shape[0] - 1, -1, -1):
        if acc is not None:
            acc = powmod(acc, 1 << c, nsq)
        d = digits[t]
        nz = np.flatnonzero(d)
        if nz.size == 0:
            continue
        dn = d[nz]
        sel = (nz + rows * (dn < 0)).tolist()
        absd = np.abs(dn)
        buckets: list[mpz | None] = [None] * (half + 1)
        for u, b in zip(absd.tolist(), sel):
            cur = buckets[u]
            buckets[u] = both[b] if cur is None else cur * both[b] % nsq
        running = total = None
        for u in range(int(absd.max()), 0, -1):  # the top window often uses few buckets
            bu = buckets[u]
            if bu is not None:
                running = bu if running is None else running * bu % nsq
            if running is not None:
                total = running if total is None else total * running % nsq
        if total is not None:
            acc = total if acc is None else acc * total % nsq
    return acc if acc is not None else mpz(1)


def _w_plain_matmul(n: int, blob: bytes, cols: int, xenc: np.ndarray) -> bytes:
    """Partial ``X[:, rows] @ E[rows, :]`` for one chunk of rows; ``xenc`` is ``(k, rows)``."""
    N = mpz(n)
    nsq = N * N
    width = _width(nsq)
    cs = _from_blob(blob, width)
    chosen = [_column_digits(xenc[j]) for j in range(xenc.shape[0])]
    # signed digits of positive values can be negative too: inverses are needed if any is
    need_inv = any(bool(np.any(d < 0)) for _, d in chosen)
    out = []
    for col in range(cols):
        bases = cs[col::cols]
        invs = _batch_invert(bases, nsq) if need_inv else []
        for c, digits in chosen:
            out.append(_pippenger(bases, invs, digits, c, nsq))
    # out is ordered (col, j); return (j, col)
    k = xenc.shape[0]
    ordered = [out[col * k + j] for j in range(k) for col in range(cols)]
    return _to_blob(ordered, width)


def _w_enc_matmul(n: int, blob: bytes, k: int, wenc: np.ndarray) -> bytes:
    """``E[rows, :] @ W`` for one chunk of rows with Straus' shared squarings per output."""
    N = mpz(n)
    nsq = N * N
    width = _width(nsq)
    cs = _from_blob(blob, width)
    m = wenc.shape[1]
    top = int(np.abs(wenc).max()) if wenc.size else 0
    bits = top.bit_length() + 1

    def cost(c: int) -> int:
        return int(k * (1 << c) + m * (-(-bits // c)) * (k + c))

    c = min(range(1, 9), key=cost)
    digits = np.stack([_signed_digits(wenc[:, col], c) for col in range(m)])  # (m, T, k)
    half = 1 << (c - 1)
    need_inv = bool(np.any(digits < 0))
    invs = _batch_invert(cs, nsq) if need_inv else []
    out = []
    for i in range(len(cs) // k):
        pos, neg = [], []
        for j in range(k):
            base = cs[i * k + j]
            row = [mpz(1), base]
            for _ in range(half - 1):
                row.append(row[-1] * base % nsq)
            pos.append(row)
            if need_inv:
                ib = invs[i * k + j]
                irow = [mpz(1), ib]
                for _ in range(half - 1):
                    irow.append(irow[-1] * ib % nsq)
                neg.append(irow)
        for col in range(m):
            acc = None
            dcol = digits[col]
            for t in range(dcol.shape[0] - 1, -1, -1):
                if acc is not None:
                    acc = powmod(acc, 1 << c, nsq)
                for j, u in enumerate(dcol[t].tolist()):
                    if u:
                        f = pos[j][u] if u > 0 else neg[j][-u]
                        acc = f if acc is None else acc * f % nsq
            out.append(acc if acc is not None else mpz(1))
    return _to_blob(out, width)


# --------------------------------------------------------------------------------------------
# arrays


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


class EncryptedArray:
    """A 1-D or 2-D array of ciphertexts under one key with one common exponent.

    Attributes:
        public: the key.
        shape: numpy-style shape.
        exponent: base-16 exponent shared by all values.
        bound: a bound on the magnitude of every encoded integer (``|round(x*16**-exponent)|``)
            known to this party, or ``None``. Arithmetic propagates it and raises
            :class:`EncodingOverflow` when a result could leave the plaintext space; packing and
            masking derive their headroom from it. It is never serialised.
        fresh: every ciphertext carries fresh randomness (outputs of :func:`encrypt`,
            :func:`mask`, :func:`rerandomize`); arithmetic results are not fresh.
    """

    # numpy must not try to broadcast an EncryptedArray as an object: ``ndarray + enc`` and
    # ``float64 * enc`` then fall back to our reflected operators.
    __array_ufunc__ = None

    def __init__(
        self,
        public: PublicKey,
        values: list[mpz],
        shape: tuple[int, ...],
        exponent: int,
        *,
        bound: int | None = None,
        fresh: bool = False,
    ) -> None:
        shape = tuple(int(s) for s in shape)
        if _size(shape) != len(values):
            raise CryptoError(f"{len(values)} ciphertexts do not fill shape {shape}")
        self.public = public
        self._c = values
        self.shape = shape
        self.exponent = int(exponent)
        self.bound = bound
        self.fresh = fresh

    # -- container protocol ----------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return len(self._c)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d EncryptedArray")
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"EncryptedArray(shape={self.shape}, exponent={self.exponent}, "
            f"key={self.public.fingerprint[:16]}…)"
        )

    def _like(self, values: list[mpz], shape: tuple[int, ...], **kw: Any) -> EncryptedArray:
        kw.setdefault("bound", self.bound)
        kw.setdefault("exponent", self.exponent)
        exponent = kw.pop("exponent")
        return EncryptedArray(self.public, values, shape, exponent, **kw)

    def __getitem__(self, idx: Any) -> EncryptedArray:
        pos = np.arange(self.size).reshape(self.shape)[idx]
        pos = np.asarray(pos)
        return self._like([self._c[i] for i in pos.ravel().tolist()], pos.shape, fresh=self.fresh)

    def reshape(self, *shape: Any) -> EncryptedArray:
        """Same ciphertexts, another shape (``-1`` allowed)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        new = np.empty(self.size, dtype=np.int8).reshape(shape).shape
        return self._like(list(self._c), new, fresh=self.fresh)

    @property
    def T(self) -> EncryptedArray:
        """Transpose of a 2-D array."""
        if self.ndim < 2:
            return self
        pos = np.arange(self.size).reshape(self.shape).T
        return self._like([self._c[i] for i in pos.ravel().tolist()], pos.shape, fresh=self.fresh)

    def with_bound(self, max_abs: float) -> EncryptedArray:
        """Declare that every value has magnitude at most ``max_abs`` (e.g. residuals in [-1, 1]).

        The declaration feeds overflow checks and packing headroom; :func:`unmask` and
        :func:`decrypt_packed` check it on the way back.
        """
        return self._like(
            list(self._c),
            self.shape,
            bound=_enc.int_bound(max_abs, self.exponent),
            fresh=self.fresh,
        )

    # -- serialisation ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Fixed-width big-endian bytes (``ceil(bits(n^2)/8)`` per ciphertext), C order."""
        return _to_blob(self._c, self.public.width)

    @classmethod
    def from_bytes(
        cls,
        public: PublicKey,
        data: bytes,
        shape: Sequence[int],
        exponent: int,
        *,
        max_abs: float | None = None,
    ) -> EncryptedArray:
        """Load ciphertexts written by :meth:`to_bytes`.

        Args:
            public: the key the sender encrypted under.
            data: the bytes.
            shape: the array's shape.
            exponent: the common exponent (from the artifact manifest).
            max_abs: an optional declared bound on the values' magnitudes.

        Raises:
            InvalidArtifact: wrong length, a value outside ``(0, n^2)`` or not a unit mod ``n``.
        """
        shape_t = tuple(int(s) for s in shape)
        count = _size(shape_t)
        width = public.width
        if len(data) != count * width:
            raise InvalidArtifact(
                f"ciphertext payload has {len(data)} bytes, expected {count} x {width} = "
                f"{count * width} for shape {shape_t} under a {public.bits}-bit key"
            )
        values = _from_blob(bytes(data), width)
        nsq = public.nsquare
        N = mpz(public.n)
        check = mpz(1)
        for i, c in enumerate(values):
            if not 0 < c < nsq:
                raise InvalidArtifact(f"ciphertext {i} is not in the range (0, n^2) of this key")
            check = check * c % N
        if gmpy2.gcd(check, N) != 1:
            raise InvalidArtifact("a ciphertext is not a unit modulo n: not a valid ciphertext")
        bound = None if max_abs is None else _enc.int_bound(max_abs, exponent)
        return cls(public, values, shape_t, exponent, bound=bound)

    def meta(self) -> dict[str, Any]:
        """JSON-safe description for an artifact manifest: the key fingerprint once per vector."""
        return {
            "key_id": self.public.fingerprint,
            "shape": list(self.shape),
            "exponent": self.exponent,
            "width": self.public.width,
        }

    @classmethod
    def from_meta(cls, public: PublicKey, data: bytes, meta: dict[str, Any]) -> EncryptedArray:
        """Load ciphertexts described by :meth:`meta`, checking they are under ``public``.

        Raises:
            KeyMismatch: the manifest names another key.
            InvalidArtifact: a malformed description or payload.
        """
        try:
            key_id, shape = str(meta["key_id"]), [int(v) for v in meta["shape"]]
            exponent, width = int(meta["exponent"]), int(meta["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArtifact(f"ciphertext vector: bad or missing member ({exc})") from None
        if key_id != public.fingerprint:
            raise KeyMismatch(
                f"the ciphertexts were encrypted under key {key_id[:16]}…, the key at hand is "
                f"{public.fingerprint[:16]}…"
            )
        if width != public.width:
            raise InvalidArtifact(f"ciphertext vector: width {width}, expected {public.width}")
        return cls.from_bytes(public, data, shape, exponent)

    def to_phe(self) -> list[phe.EncryptedNumber]:
        """The ciphertexts as phe ``EncryptedNumber`` objects (flat, C order)."""
        pk = self.public.phe
        return [phe.EncryptedNumber(pk, int(c), self.exponent) for c in self._c]

    @classmethod
    def from_phe(
        cls,
        public: PublicKey,
        numbers: Sequence[phe.EncryptedNumber],
        shape: Sequence[int] | None = None,
    ) -> EncryptedArray:
        """Wrap phe ``EncryptedNumber`` objects; exponents are lowered to the smallest one.

        Raises:
            KeyMismatch: a number is under another key.
        """
        nums = list(numbers)
        for num in nums:
            if int(num.public_key.n) != public.n:
                raise KeyMismatch("a phe EncryptedNumber is under another public key")
        exponent = min((int(num.exponent) for num in nums), default=EXPONENT)
        nsq = mpz(public.nsquare)
        # be_secure=True: phe obfuscates any number that was never obfuscated, so what we wrap
        # is as safe to transmit as phe itself would make it.
        values = [mpz(num.ciphertext(be_secure=True)) for num in nums]
        for i, num in enumerate(nums):
            if num.exponent != exponent:
                values[i] = powmod(values[i], _enc.BASE ** (int(num.exponent) - exponent), nsq)
        shape_t = (len(nums),) if shape is None else tuple(int(s) for s in shape)
        return cls(public, values, shape_t, exponent)

    # -- arithmetic -------------------------------------------------------------------------

    def _check_bound(self, bound: int | None) -> int | None:
        if bound is not None and bound > self.public.max_int:
            raise EncodingOverflow(
                f"the result may need {bound.bit_length()} bits, more than the "
                f"{self.public.max_int.bit_length()}-bit plaintext space of this key"
            )
        return bound

    def _lowered(self, exponent: int, n_jobs: int | None = None) -> EncryptedArray:
        if exponent == self.exponent:
            return self
        if exponent > self.exponent:
            raise CryptoError("an exponent can only be lowered")
        factor = _enc.BASE ** (self.exponent - exponent)
        values = _powmod_all(self.public, self._c, [factor], n_jobs)
        bound = None if self.bound is None else self._check_bound(self.bound * factor)
        return self._like(values, self.shape, exponent=exponent, bound=bound)

    def __add__(self, other: Any) -> EncryptedArray:
        nsq = mpz(self.public.nsquare)
        N = mpz(self.public.n)
        if isinstance(other, EncryptedArray):
            if other.public.n != self.public.n:
                raise KeyMismatch("cannot add ciphertexts under different keys")
            e = min(self.exponent, other.exponent)
            a, b = self._lowered(e), other._lowered(e)
            ia, ib, shape = _broadcast(a.shape, b.shape)
            values = [a._c[i] * b._c[j] % nsq for i, j in zip(ia, ib)]
            bound = None if a.bound is None or b.bound is None else a.bound + b.bound
            return self._like(values, shape, exponent=e, bound=self._check_bound(bound))
        plain = np.asarray(other, dtype=np.float64)
        residues, biggest = _enc.encode(plain, self.public.n, self.exponent)
        ia, ib, shape = _broadcast(self.shape, plain.shape)
        values = []
        for i, j in zip(ia, ib):
            c = self._c[i]
            # (1 + m n) c = c + n (m c mod n)  (mod n^2): cheaper than a full product mod n^2
            v = c + N * (residues[j] * c % N)
            values.append(v - nsq if v >= nsq else v)
        bound = None if self.bound is None else self.bound + biggest
        return self._like(values, shape, bound=self._check_bound(bound))

    __radd__ = __add__

    def __neg__(self) -> EncryptedArray:
        values = _invert_all(self.public, self._c)
        return self._like(values, self.shape)

    def __sub__(self, other: Any) -> EncryptedArray:
        if isinstance(other, EncryptedArray):
            return self + (-other)
        return self + (-np.asarray(other, dtype=np.float64))

    def __rsub__(self, other: Any) -> EncryptedArray:
        return (-self).__add__(other)

    def mul(self, other: Any, *, n_jobs: int | None = None) -> EncryptedArray:
        """``self * other`` (plain scalar or array, broadcast) with an explicit ``n_jobs``.

        Integers are encoded with exponent 0, floats with :data:`EXPONENT` (the result's
        exponent is ``self.exponent + EXPONENT``).

        Raises:
            TypeError: ``other`` is encrypted or not numeric.
            EncodingOverflow: the result could overflow the plaintext space.
        """
        if isinstance(other, EncryptedArray):
            raise TypeError("Paillier cannot multiply two ciphertexts; one side must be plain")
        arr = np.asarray(other)
        if arr.dtype.kind == "O" and all(isinstance(v, (int, np.integer)) for v in arr.flat):
            ints = [int(v) for v in arr.ravel().tolist()]  # Python ints beyond int64
            e = 0
        elif arr.dtype.kind in "iub":
            ints = [int(v) for v in arr.ravel().tolist()]
            e = 0
        elif arr.dtype.kind == "f":
            ints = _enc.encode_signed(arr, EXPONENT)
            e = EXPONENT
        else:
            raise TypeError(f"cannot multiply ciphertexts by {type(other).__name__}")
        ia, ib, shape = _broadcast(self.shape, arr.shape)
        exps = [ints[j] for j in ib]
        values = _powmod_all(self.public, [self._c[i] for i in ia], exps, n_jobs)
        biggest = max((abs(v) for v in ints), default=0)
        bound = None if self.bound is None else self.bound * biggest
        return self._like(values, shape, exponent=self.exponent + e, bound=self._check_bound(bound))

    def __mul__(self, other: Any) -> EncryptedArray:
        return self.mul(other)

    def __rmul__(self, other: Any) -> EncryptedArray:
        return self.mul(other)

    def sum(self, axis: int | None = None) -> EncryptedArray:
        """Homomorphic sum over all values (``axis=None``) or along ``axis`` (0 or 1)."""
        nsq = mpz(self.public.nsquare)
        if axis is None or self.ndim == 1:
            if axis not in (None, 0, -1):
                raise CryptoError(f"axis {axis} is out of range for a 1-D array")
            shape: tuple[int, ...] = ()
            groups, count = [self._c], self.size
        else:
            if axis not in (0, 1, -1, -2):
                raise CryptoError(f"axis {axis} is out of range for a 2-D array")
            src = self if axis in (1, -1) else self.T
            rows, cols = src.shape
            groups = [src._c[r * cols : (r + 1) * cols] for r in range(rows)]
            shape, count = (rows,), cols
        out = []
        for g in groups:
            acc = mpz(1)
            for c in g:
                acc = acc * c % nsq
            out.append(acc)
        bound = None if self.bound is None else self._check_bound(self.bound * count)
        return self._like(out, shape, bound=bound)


def _broadcast(
    sa: tuple[int, ...], sb: tuple[int, ...]
) -> tuple[list[int], list[int], tuple[int, ...]]:
    try:
        ia, ib = np.broadcast_arrays(
            np.arange(_size(sa)).reshape(sa), np.arange(_size(sb)).reshape(sb)
        )
    except ValueError:
        raise CryptoError(f"shapes {sa} and {sb} do not broadcast") from None
    return ia.ravel().tolist(), ib.ravel().tolist(), ia.shape


def _powmod_all(
    public: PublicKey, values: list[mpz], exps: list[int], n_jobs: int | None
) -> list[mpz]:
    width = public.width
    slices = _par.split(len(values), n_jobs, min_chunk=64, per_worker=2)
    tasks = [
        (public.n, _to_blob(values[s], width), exps if len(exps) == 1 else exps[s]) for s in slices
    ]
    out: list[mpz] = []
    for blob in _par.run(_w_powmod, tasks, n_jobs):
        out.extend(_from_blob(blob, width))
    return out


def _invert_all(public: PublicKey, values: list[mpz]) -> list[mpz]:
    return _batch_invert(values, mpz(public.nsquare))


def concatenate(arrays: Sequence[EncryptedArray]) -> EncryptedArray:
    """Join arrays along the first axis (same key; exponents lowered to the smallest)."""
    if not arrays:
        raise CryptoError("nothing to concatenate")
    first = arrays[0]
    e = min(a.exponent for a in arrays)
    parts = []
    for a in arrays:
        if a.public.n != first.public.n:
            raise KeyMismatch("cannot concatenate ciphertexts under different keys")
        if a.shape[1:] != first.shape[1:]:
            raise CryptoError(f"shapes {first.shape} and {a.shape} do not concatenate")
        parts.append(a._lowered(e))
    values = [c for p in parts for c in p._c]
    shape = (sum(p.shape[0] for p in parts),) + first.shape[1:]
    bounds = [p.bound for p in parts]
    bound = None if any(b is None for b in bounds) else max(b for b in bounds if b is not None)
    return EncryptedArray(
        first.public, values, shape, e, bound=bound, fresh=all(p.fresh for p in parts)
    )


# --------------------------------------------------------------------------------------------
# encryption, re-randomisation


def encrypt(
    public: PublicKey,
    values: np.ndarray | Sequence[float] | float,
    *,
    exponent: int = EXPONENT,
    n_jobs: int | None = None,
) -> EncryptedArray:
    """Encrypt real values with fresh randomness for every ciphertext.

    With ``h`` in the key each ciphertext is ``(1 + m n) * h**a mod n^2`` for a fresh random
    short exponent ``a`` (DJN form); without ``h``, textbook ``(1 + m n) * r**n``.

    Args:
        public: the key.
        values: a float array (any shape; 1-D or 2-D for engine arithmetic).
        exponent: base-16 fixed-point exponent (keep the default for transmitted values).
        n_jobs: workers (default: all cores; in-process for small inputs).

    Raises:
        EncodingOverflow: a value does not fit the plaintext space.
    """
    arr = np.asarray(values, dtype=np.float64)
    ebits = public.short_exponent_bits
    if ebits % _WINDOW or ebits < 2 * security_bits(public.bits):
        raise CryptoError(
            f"short_exponent_bits must be a multiple of {_WINDOW} and at least "
            f"{2 * security_bits(public.bits)} for a {public.bits}-bit key, got {ebits}"
        )
    _, biggest = _enc.encode(arr, public.n, exponent)  # fail early, in the caller's process
    flat = arr.ravel()
    width = public.width
    tasks = [
        (public.n, public.h, public.short_exponent_bits, flat[s], exponent)
        for s in _par.split(flat.size, n_jobs, min_chunk=128, per_worker=2)
    ]
    out: list[mpz] = []
    for blob in _par.run(_w_encrypt, tasks, n_jobs):
        out.extend(_from_blob(blob, width))
    return EncryptedArray(public, out, arr.shape, exponent, bound=biggest, fresh=True)


class ObfuscatorPool:
    """Precomputed uniform ``r**n mod n^2`` values, filled while a party waits for a peer.

    Each value is used once (taken out of the pool). The pool lives in memory only: an
    obfuscator that leaked would let its holder strip the randomness of one ciphertext.
    """

    def __init__(self, public: PublicKey) -> None:
        self.public = public
        self._items: list[mpz] = []

    def __len__(self) -> int:
        return len(self._items)

    def fill(self, count: int, *, n_jobs: int | None = None) -> None:
        """Compute ``count`` more obfuscators (in parallel)."""
        self._items.extend(_fresh_obfuscators(self.public, count, n_jobs))

    def to_bytes(self) -> bytes:
        """The remaining obfuscators, to keep in the party's private workspace (treat like a
        private key; rewrite the file after every :meth:`take` so none is ever reused)."""
        return _to_blob(self._items, self.public.width)

    @classmethod
    def from_bytes(cls, public: PublicKey, data: bytes) -> ObfuscatorPool:
        """Reload a pool written by :meth:`to_bytes`.

        Raises:
            InvalidArtifact: the data is not a whole number of ciphertext-sized values.
        """
        if len(data) % public.width:
            raise InvalidArtifact("obfuscator pool: length is not a multiple of the value width")
        pool = cls(public)
        pool._items = _from_blob(bytes(data), public.width)
        if any(not 0 < v < public.nsquare for v in pool._items):
            raise InvalidArtifact("obfuscator pool: a value is out of range for this key")
        return pool

    def take(self, count: int, *, n_jobs: int | None = None) -> list[mpz]:
        """Remove and return ``count`` obfuscators, computing any the pool lacks."""
        have = min(count, len(self._items))
        out = self._items[len(self._items) - have :]
        del self._items[len(self._items) - have :]
        if have < count:
            out.extend(_fresh_obfuscators(self.public, count - have, n_jobs))
        return out


def _fresh_obfuscators(public: PublicKey, count: int, n_jobs: int | None) -> list[mpz]:
    # each obfuscator costs a full exponentiation (about 11 ms at 2048 bits): parallelise
    # small counts too when the key is large enough for that to pay off
    min_items = 8 if public.bits >= 1536 else MIN_OBFUSCATE_SMALL_KEY
    slices = _par.split(count, n_jobs, min_chunk=4, min_items=min_items)
    tasks = [(public.n, None, s.stop - s.start) for s in slices]
    out: list[mpz] = []
    for blob in _par.run(_w_obfuscate, tasks, n_jobs):
        out.extend(_from_blob(blob, public.width))
    return out


def rerandomize(
    x: EncryptedArray, *, pool: ObfuscatorPool | None = None, n_jobs: int | None = None
) -> EncryptedArray:
    """Multiply every ciphertext by a uniform ``r**n``: the result is fresh and safe to send,
    even to the key holder (who could otherwise recover the randomness of a computed result)."""
    nsq = mpz(x.public.nsquare)
    if pool is not None:
        if pool.public.n != x.public.n:
            raise KeyMismatch("the obfuscator pool is for another key")
        obf = pool.take(x.size, n_jobs=n_jobs)
    else:
        obf = _fresh_obfuscators(x.public, x.size, n_jobs)
    values = [c * r % nsq for c, r in zip(x._c, obf)]
    return x._like(values, x.shape, fresh=True)


# --------------------------------------------------------------------------------------------
# matrix products


def _encode_matrix(X: np.ndarray, exponent: int) -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    if A.size and not np.all(np.isfinite(A)):
        raise EncodingOverflow("the plaintext matrix holds NaN or infinite values")
    scaled = np.rint(np.ldexp(A, -_enc.LOG2_BASE * exponent))
    if A.size and float(np.max(np.abs(scaled))) >= 2.0**62:
        raise EncodingOverflow(
            f"plaintext matrix values up to {2.0 ** (62 + _enc.LOG2_BASE * exponent):g} are "
            f"supported at exponent {exponent}; scale the data down"
        )
    return scaled.astype(np.int64)


def plain_matmul(
    X: np.ndarray,
    E: EncryptedArray,
    *,
    exponent: int = EXPONENT,
    n_jobs: int | None = None,
) -> EncryptedArray:
    """Plaintext matrix times encrypted vector or matrix: ``X (k x n) @ E (n,) or (n x m)``.

    ``X^T [[d]]`` is ``plain_matmul(X.T, d)``. ``X`` is encoded with ``exponent`` (so the result
    has exponent ``E.exponent + exponent``) and every output is a signed-digit bucket
    (Pippenger) multi-exponentiation over the rows, chunked over rows across workers.
    The result is not fresh: :func:`mask` it before it leaves the party.

    Raises:
        CryptoError: the shapes do not match.
        EncodingOverflow: the result could overflow the plaintext space.
    """
    A = np.asarray(X, dtype=np.float64)
    if A.ndim == 1:
        A = A[None, :]
        squeeze = True
    else:
        squeeze = False
    if A.ndim != 2 or E.ndim not in (1, 2) or A.shape[1] != E.shape[0]:
        raise CryptoError(f"cannot multiply a plain {np.shape(X)} matrix by encrypted {E.shape}")
    xenc = _encode_matrix(A, exponent)
    k, rows = xenc.shape
    cols = 1 if E.ndim == 1 else E.shape[1]
    bound = None
    if E.bound is not None:
        row_l1 = max((sum(abs(int(v)) for v in r.tolist()) for r in xenc), default=0)
        bound = E._check_bound(row_l1 * E.bound)
    width = E.public.width
    nsq = mpz(E.public.nsquare)
    slices = _par.split(rows, n_jobs, min_chunk=2048)
    tasks = [
        (
            E.public.n,
            _to_blob(E._c[s.start * cols : s.stop * cols], width),
            cols,
            np.ascontiguousarray(xenc[:, s]),
        )
        for s in slices
    ]
    acc: list[mpz] | None = None
    for blob in _par.run(_w_plain_matmul, tasks, n_jobs):
        part = _from_blob(blob, width)
        acc = part if acc is None else [a * b % nsq for a, b in zip(acc, part)]
    if acc is None:
        acc = [mpz(1)] * (k * cols)
    shape: tuple[int, ...] = (k,) if E.ndim == 1 else (k, cols)
    if squeeze:
        shape = shape[1:]
    return EncryptedArray(E.public, acc, shape, E.exponent + exponent, bound=bound)


def enc_matmul(
    E: EncryptedArray,
    W: np.ndarray,
    *,
    exponent: int = EXPONENT,
    n_jobs: int | None = None,
) -> EncryptedArray:
    """Encrypted matrix times plaintext matrix: ``E (n x k) @ W (k x m) -> (n x m)``.

    For split neural networks. ``W`` is encoded with ``exponent``; each row is a small
    multi-exponentiation with shared squarings (Straus) and signed windows. Not fresh.

    Raises:
        CryptoError: the shapes do not match.
        EncodingOverflow: the result could overflow the plaintext space.
    """
    Wf = np.asarray(W, dtype=np.float64)
    vector = Wf.ndim == 1
    if vector:
        Wf = Wf[:, None]
    if E.ndim != 2 or Wf.ndim != 2 or E.shape[1] != Wf.shape[0]:
        raise CryptoError(f"cannot multiply encrypted {E.shape} by a plain {np.shape(W)} matrix")
    wenc = _encode_matrix(Wf, exponent)
    rows, k = E.shape
    m = wenc.shape[1]
    bound = None
    if E.bound is not None:
        col_l1 = max((sum(abs(int(v)) for v in col.tolist()) for col in wenc.T), default=0)
        bound = E._check_bound(col_l1 * E.bound)
    width = E.public.width
    # a row costs about k*m multiplications: parallelise once there are a few thousand
    per_row = max(1, k * m)
    slices = _par.split(
        rows,
        n_jobs,
        min_chunk=max(1, 512 // per_row),
        per_worker=2,
        min_items=max(2, 4096 // per_row),
    )
    tasks = [(E.public.n, _to_blob(E._c[s.start * k : s.stop * k], width), k, wenc) for s in slices]
    out: list[mpz] = []
    for blob in _par.run(_w_enc_matmul, tasks, n_jobs):
        out.extend(_from_blob(blob, width))
    shape = (rows,) if vector else (rows, m)
    return EncryptedArray(E.public, out, shape, E.exponent + exponent, bound=bound)


# --------------------------------------------------------------------------------------------
# masking and packing


@dataclass(frozen=True)
class Mask:
    """What the masking party keeps to undo :func:`mask` (never sent).

    Attributes:
        fingerprint: key fingerprint.
        n: the modulus.
        exponent: exponent of the masked values.
        shape: shape of the masked array.
        offsets: the random integers added (flat, C order).
        shift: public shift added to make bounded values non-negative (0 for full-domain masks).
        bound: bound on the encoded magnitudes of the unmasked values, or ``None`` (full domain).
    """

    fingerprint: str
    n: int
    exponent: int
    shape: tuple[int, ...]
    offsets: tuple[int, ...]
    shift: int
    bound: int | None

    def __repr__(self) -> str:  # never print the offsets
        return (
            f"Mask(shape={self.shape}, exponent={self.exponent}, bounded={self.bound is not None})"
        )


def mask(
    x: EncryptedArray,
    *,
    rng: random.Random | None = None,
    stat_bits: int = 40,
    value_bits: int | None = None,
    pool: ObfuscatorPool | None = None,
    n_jobs: int | None = None,
) -> tuple[EncryptedArray, Mask]:
    """Add random integers to every value and re-randomise: safe to send to the key holder.

    Bounded mask (when ``value_bits`` is given or ``x.bound`` is known): with ``B = 2**value_bits``
    (or the bound), each value ``v`` (``|v| <= B``) becomes ``v + B + r`` with ``r`` uniform in
    ``[0, 2**(bits(2B) + stat_bits))``: statistically hiding (distance at most
    ``2**-stat_bits``), non-negative and small, so it can be packed. Pass ``value_bits`` so that
    the mask width is a public constant of the protocol, not derived from this party's data.
    Full-domain mask otherwise: ``r`` uniform modulo ``n`` (perfectly hiding, cannot be packed).

    Args:
        x: the values to hide from the key holder.
        rng: source of the mask integers (default: the OS's CSPRNG); tests may inject one.
        stat_bits: statistical hiding parameter of bounded masks.
        value_bits: public bound ``|v| <= 2**value_bits`` on the encoded magnitudes.
        pool: precomputed obfuscators to use.
        n_jobs: workers for the re-randomisation.

    Returns:
        The masked, re-randomised array and the :class:`Mask` to keep.

    Raises:
        EncodingOverflow: ``x.bound`` exceeds ``2**value_bits``.
    """
    rand = rng if rng is not None else secrets.SystemRandom()
    n = x.public.n
    if value_bits is not None:
        limit = 1 << value_bits
        if x.bound is not None and x.bound > limit:
            raise EncodingOverflow(
                f"values may need {x.bound.bit_length()} bits, more than the declared "
                f"value_bits={value_bits}"
            )
        bound: int | None = limit
    else:
        bound = x.bound
    shift = 0
    if bound is not None:
        rbits = (2 * bound).bit_length() + stat_bits
        masked_bound = 2 * bound + (1 << rbits)
        if masked_bound > x.public.max_int:
            bound = None  # too wide to be useful: fall back to a full-domain mask
    if bound is not None:
        shift = bound
        offsets = tuple(rand.getrandbits(rbits) for _ in range(x.size))
        out_bound: int | None = masked_bound
    else:
        offsets = tuple(rand.randrange(n) for _ in range(x.size))
        out_bound = None
    N = mpz(n)
    nsq = mpz(x.public.nsquare)
    added = []
    for c, r in zip(x._c, offsets):
        m = (r + shift) % n
        v = c + N * (m * c % N)
        added.append(v - nsq if v >= nsq else v)
    masked = rerandomize(x._like(added, x.shape, bound=out_bound), pool=pool, n_jobs=n_jobs)
    masked.bound = out_bound
    return masked, Mask(x.public.fingerprint, n, x.exponent, x.shape, offsets, shift, bound)


def unmask(raw: Sequence[int], m: Mask) -> np.ndarray:
    """Undo a mask exactly: subtract it modulo ``n`` and decode the fixed-point values.

    Args:
        raw: residues modulo ``n`` from :meth:`PrivateKey.decrypt_raw` or :func:`decrypt_packed`.
        m: the mask kept by :func:`mask`.

    Raises:
        CryptoError: the number of values differs from the mask's.
        EncodingOverflow: a value exceeds its bound (or the plaintext space): it overflowed.
    """
    if len(raw) != len(m.offsets):
        raise CryptoError(f"{len(raw)} values returned for a mask of {len(m.offsets)}")
    limit = m.bound if m.bound is not None else _enc.max_int(m.n)
    out = []
    for y, r in zip(raw, m.offsets):
        v = (int(y) - r - m.shift) % m.n
        if v > m.n // 2:
            v -= m.n
        if abs(v) > limit:
            raise EncodingOverflow(
                "an unmasked value exceeds its bound: the computation overflowed the declared "
                "headroom; use a larger value_bits"
            )
        out.append(v)
    return _enc.decode(out, m.exponent).reshape(m.shape)


@dataclass(frozen=True)
class Packed:
    """Several fixed-point slots per ciphertext, for one decryption per ``slots`` values.

    Slot ``j`` of a ciphertext holds ``v_j + offset`` in ``slot_bits`` bits, with
    ``0 <= v_j + offset <= 2 * offset < 2**(slot_bits - GUARD_BITS)``.

    Attributes:
        ciphertexts: the packed ciphertexts (1-D).
        count: number of packed values.
        shape: shape of the values before packing.
        exponent: their exponent.
        slot_bits: width of a slot in bits.
        slots: slots per ciphertext.
        offset: public shift that makes values non-negative.
    """

    ciphertexts: EncryptedArray
    count: int
    shape: tuple[int, ...]
    exponent: int
    slot_bits: int
    slots: int
    offset: int

    @property
    def public(self) -> PublicKey:
        return self.ciphertexts.public

    def to_bytes(self) -> bytes:
        """The packed ciphertexts as fixed-width bytes."""
        return self.ciphertexts.to_bytes()

    def meta(self) -> dict[str, Any]:
        """JSON-safe layout to put in an artifact manifest (the offset as a hex string)."""
        return {
            "count": self.count,
            "shape": list(self.shape),
            "exponent": self.exponent,
            "slot_bits": self.slot_bits,
            "slots": self.slots,
            "offset": format(self.offset, "x"),
            "ciphertexts": self.ciphertexts.size,
        }

    @classmethod
    def from_bytes(cls, public: PublicKey, data: bytes, meta: dict[str, Any]) -> Packed:
        """Load packed ciphertexts and check their layout fits the key.

        Raises:
            InvalidArtifact: the layout is malformed or does not fit the key.
        """
        try:
            count, slots, slot_bits = int(meta["count"]), int(meta["slots"]), int(meta["slot_bits"])
            shape = tuple(int(s) for s in meta["shape"])
            exponent, offset = int(meta["exponent"]), int(str(meta["offset"]), 16)
            ncts = int(meta["ciphertexts"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArtifact(f"packed layout: bad or missing member ({exc})") from None
        if slots < 1 or slot_bits < 1 or slot_bits * slots >= public.bits:
            raise InvalidArtifact(
                f"packed layout: {slots} slots of {slot_bits} bits do not fit a "
                f"{public.bits}-bit key"
            )
        if not 0 <= 2 * offset < 1 << (slot_bits - GUARD_BITS) or _size(shape) != count:
            raise InvalidArtifact("packed layout: offset or shape inconsistent with the slots")
        if ncts != -(-count // slots):
            raise InvalidArtifact(f"packed layout: {ncts} ciphertexts for {count} values")
        cts = EncryptedArray.from_bytes(public, data, (ncts,), exponent)
        return cls(cts, count, shape, exponent, slot_bits, slots, offset)


def pack(x: EncryptedArray, *, value_bits: int | None = None, n_jobs: int | None = None) -> Packed:
    """Pack the values of ``x`` into as few ciphertexts as the key allows.

    The headroom comes from ``value_bits`` (``|v| <= 2**value_bits``) or else from ``x.bound``
    (a masked array from :func:`mask` has one); each slot gets ``GUARD_BITS`` spare bits and
    the packed plaintext stays below ``n``. Outputs are re-randomised unless ``x`` is fresh.

    Raises:
        EncodingOverflow: no bound is known, ``x.bound`` exceeds ``2**value_bits``, or one slot
            would not fit the key.
    """
    if value_bits is not None:
        bound = 1 << value_bits
        if x.bound is not None and x.bound > bound:
            raise EncodingOverflow(
                f"values may need {x.bound.bit_length()} bits, more than value_bits={value_bits}"
            )
    elif x.bound is not None:
        bound = x.bound
    else:
        raise EncodingOverflow(
            "cannot pack values of unknown magnitude: pass value_bits, mask() with value_bits, "
            "or declare a bound with with_bound()"
        )
    slot_bits = (2 * bound).bit_length() + GUARD_BITS
    slots = (x.public.bits - 1) // slot_bits
    if slots < 1:
        raise EncodingOverflow(f"a {slot_bits}-bit slot does not fit a {x.public.bits}-bit key")
    nsq = mpz(x.public.nsquare)
    N = mpz(x.public.n)
    shift = 1 << slot_bits
    out = []
    for start in range(0, x.size, slots):
        group = x._c[start : start + slots]
        acc = group[-1]
        for c in reversed(group[:-1]):
            acc = powmod(acc, shift, nsq) * c % nsq
        # add the public offset to every slot: m += offset * sum_j 2**(slot_bits j)
        plain = sum(bound << (slot_bits * j) for j in range(len(group))) % x.public.n
        v = acc + N * (plain * acc % N)
        out.append(v - nsq if v >= nsq else v)
    cts = EncryptedArray(x.public, out, (len(out),), x.exponent, fresh=x.fresh)
    if not x.fresh:
        cts = rerandomize(cts, n_jobs=n_jobs)
    return Packed(cts, x.size, x.shape, x.exponent, slot_bits, slots, bound)


def decrypt_packed(priv: PrivateKey, p: Packed, *, n_jobs: int | None = None) -> list[int]:
    """Decrypt packed ciphertexts (one decryption per ``p.slots`` values) to raw slot integers.

    Returns residues modulo ``n`` like :meth:`PrivateKey.decrypt_raw` would for the unpacked
    array, so :func:`unmask` (masked values) or :func:`unpack` (plain values) apply unchanged.

    Raises:
        KeyMismatch: another key.
        EncodingOverflow: a slot overflowed its headroom.
    """
    priv._check(p.ciphertexts)
    n = priv.public.n
    residues = priv.decrypt_raw(p.ciphertexts, n_jobs=n_jobs)
    width_mask = (1 << p.slot_bits) - 1
    out: list[int] = []
    for k, m in enumerate(residues):
        used = min(p.slots, p.count - k * p.slots)
        if m >> (p.slot_bits * used):
            raise EncodingOverflow("a packed plaintext overflowed its slots")
        for j in range(used):
            s = (m >> (p.slot_bits * j)) & width_mask
            if s > 2 * p.offset:
                raise EncodingOverflow(
                    "a packed slot overflowed its headroom: a value exceeded its declared bound"
                )
            out.append((s - p.offset) % n)
    return out


def unpack(raw: Sequence[int], p: Packed) -> np.ndarray:
    """Decode the raw slot integers of an unmasked :class:`Packed` to float64 values."""
    n = p.public.n
    ints = [_enc.signed(int(r), n) for r in raw]
    if any(abs(v) > p.offset for v in ints):
        raise EncodingOverflow("a packed value exceeds its bound")
    return _enc.decode(ints, p.exponent).reshape(p.shape)
