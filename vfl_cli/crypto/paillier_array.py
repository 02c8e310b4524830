"""The encrypted-array type: encryption, homomorphic arithmetic, re-randomisation, freshness.

Reach it through :mod:`vfl_cli.crypto.paillier`. Outputs of :func:`encrypt` and
:func:`rerandomize` are *fresh* (every ciphertext carries new randomness); results of
arithmetic are not, and :func:`require_fresh` refuses them where ciphertexts leave a party.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import gmpy2
import numpy as np
import phe
from gmpy2 import mpz, powmod

from vfl_cli.crypto import encoding as _enc
from vfl_cli.crypto import paillier_kernels as _k
from vfl_cli.crypto import parallel as _par
from vfl_cli.crypto.paillier_keys import PublicKey, long_exponent_bits, security_bits
from vfl_cli.errors import CryptoError, EncodingOverflow, InvalidArtifact, KeyMismatch

EXPONENT = _enc.EXPONENT

MIN_OBFUSCATE_SMALL_KEY = 128  # below 1536-bit keys, obfuscators are cheap: stay in-process

Randomiser = Literal["uniform", "long-exponent"]
"""How :func:`rerandomize` draws its fresh encryptions of zero (see its docstring)."""

__all__ = [
    "EXPONENT",
    "EncryptedArray",
    "Randomiser",
    "add_ints",
    "concatenate",
    "encrypt",
    "require_fresh",
    "rerandomize",
]


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


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
        (public.n, _k.to_blob(values[s], width), exps if len(exps) == 1 else exps[s])
        for s in slices
    ]
    out: list[mpz] = []
    for blob in _par.run(_k.w_powmod, tasks, n_jobs):
        out.extend(_k.from_blob(blob, width))
    return out


def _check_ciphertexts(public: PublicKey, values: list[mpz]) -> None:
    nsq = public.nsquare
    N = mpz(public.n)
    check = mpz(1)
    for i, c in enumerate(values):
        if not 0 < c < nsq:
            raise InvalidArtifact(f"ciphertext {i} is not in the range (0, n^2) of this key")
        check = check * c % N
    if gmpy2.gcd(check, N) != 1:
        raise InvalidArtifact("a ciphertext is not a unit modulo n: not a valid ciphertext")


def _multiplier_ints(other: Any) -> tuple[np.ndarray, list[int], int]:
    """Encode a plaintext multiplier: ints with exponent 0, floats with :data:`EXPONENT`."""
    arr = np.asarray(other)
    if arr.dtype.kind == "O" and all(isinstance(v, (int, np.integer)) for v in arr.flat):
        return arr, [int(v) for v in arr.ravel().tolist()], 0  # Python ints beyond int64
    if arr.dtype.kind in "iub":
        return arr, [int(v) for v in arr.ravel().tolist()], 0
    if arr.dtype.kind == "f":
        return arr, _enc.encode_signed(arr, EXPONENT), EXPONENT
    raise TypeError(f"cannot multiply ciphertexts by {type(other).__name__}")


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
            f"key={self.public.fingerprint[:16]}…, fresh={self.fresh})"
        )

    def raw_ciphertexts(self) -> list[mpz]:
        """The ciphertext integers, flat in C order (the array's own list: do not modify it)."""
        return self._c

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
        return _k.to_blob(self._c, self.public.width)

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
        values = _k.from_blob(bytes(data), width)
        _check_ciphertexts(public, values)
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
                factor = _enc.rescale_factor(int(num.exponent), exponent)
                values[i] = powmod(values[i], factor, nsq)
        shape_t = (len(nums),) if shape is None else tuple(int(s) for s in shape)
        return cls(public, values, shape_t, exponent)

    # -- arithmetic -------------------------------------------------------------------------

    def check_bound(self, bound: int | None) -> int | None:
        """Return ``bound`` if it fits this key's plaintext space.

        Raises:
            EncodingOverflow: a result with this bound could overflow.
        """
        if bound is not None and bound > self.public.max_int:
            raise EncodingOverflow(
                f"the result may need {bound.bit_length()} bits, more than the "
                f"{self.public.max_int.bit_length()}-bit plaintext space of this key"
            )
        return bound

    def lowered(self, exponent: int, n_jobs: int | None = None) -> EncryptedArray:
        """The same values at a lower exponent (ciphertexts raised to ``16**(e_self - e)``)."""
        if exponent == self.exponent:
            return self
        if exponent > self.exponent:
            raise CryptoError("an exponent can only be lowered")
        factor = _enc.rescale_factor(self.exponent, exponent)
        values = _powmod_all(self.public, self._c, [factor], n_jobs)
        bound = None if self.bound is None else self.check_bound(self.bound * factor)
        return self._like(values, self.shape, exponent=exponent, bound=bound)

    def _add_encrypted(self, other: EncryptedArray) -> EncryptedArray:
        if other.public.n != self.public.n:
            raise KeyMismatch("cannot add ciphertexts under different keys")
        nsq = mpz(self.public.nsquare)
        e = min(self.exponent, other.exponent)
        a, b = self.lowered(e), other.lowered(e)
        ia, ib, shape = _broadcast(a.shape, b.shape)
        values = [a._c[i] * b._c[j] % nsq for i, j in zip(ia, ib, strict=True)]
        bound = None if a.bound is None or b.bound is None else a.bound + b.bound
        return self._like(values, shape, exponent=e, bound=self.check_bound(bound))

    def __add__(self, other: Any) -> EncryptedArray:
        if isinstance(other, EncryptedArray):
            return self._add_encrypted(other)
        nsq = mpz(self.public.nsquare)
        N = mpz(self.public.n)
        plain = np.asarray(other, dtype=np.float64)
        residues, biggest = _enc.encode(plain, self.public.n, self.exponent)
        ia, ib, shape = _broadcast(self.shape, plain.shape)
        values = [
            _k.add_plain(self._c[i], residues[j], N, nsq) for i, j in zip(ia, ib, strict=True)
        ]
        bound = None if self.bound is None else self.bound + biggest
        return self._like(values, shape, bound=self.check_bound(bound))

    __radd__ = __add__

    def __neg__(self) -> EncryptedArray:
        values = _k.batch_invert(self._c, mpz(self.public.nsquare))
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
        arr, ints, e = _multiplier_ints(other)
        ia, ib, shape = _broadcast(self.shape, arr.shape)
        exps = [ints[j] for j in ib]
        values = _powmod_all(self.public, [self._c[i] for i in ia], exps, n_jobs)
        biggest = max((abs(v) for v in ints), default=0)
        bound = None if self.bound is None else self.bound * biggest
        return self._like(values, shape, exponent=self.exponent + e, bound=self.check_bound(bound))

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
        out = [_k.product(g, nsq) for g in groups]
        bound = None if self.bound is None else self.check_bound(self.bound * count)
        return self._like(out, shape, bound=bound)


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
        parts.append(a.lowered(e))
    values = [c for p in parts for c in p.raw_ciphertexts()]
    shape = (sum(p.shape[0] for p in parts),) + first.shape[1:]
    bounds = [p.bound for p in parts]
    bound = None if any(b is None for b in bounds) else max(b for b in bounds if b is not None)
    return EncryptedArray(
        first.public, values, shape, e, bound=bound, fresh=all(p.fresh for p in parts)
    )


def add_ints(x: EncryptedArray, ints: np.ndarray | Sequence[int]) -> EncryptedArray:
    """``x`` plus exact integers, elementwise (same shape): values no float64 holds exactly,
    such as masks wider than 53 bits or slots packed on the plaintext side.

    The integers are added to the encodings as they are (read at ``x``'s exponent), signed and
    taken modulo ``n``. The result is not fresh: pass it through :func:`rerandomize` (or
    :func:`mask`) before it leaves the party.

    Raises:
        CryptoError: ``ints`` does not hold one integer per ciphertext.
    """
    flat = np.asarray(ints, dtype=object).ravel()
    if flat.size != x.size:
        raise CryptoError(f"{flat.size} integers for {x.size} ciphertexts")
    N, nsq = mpz(x.public.n), mpz(x.public.nsquare)
    values = [_k.add_plain(c, mpz(int(v) % x.public.n), N, nsq) for c, v in zip(x._c, flat.tolist(), strict=True)]
    return x._like(values, x.shape, bound=None)


def require_fresh(x: Any, what: str = "ciphertexts") -> None:
    """Refuse ciphertexts that do not all carry fresh randomness.

    For the boundary where ciphertexts leave a party: a computed ciphertext's randomness is a
    function of its inputs' randomness and of this party's plaintext operands, so the key
    holder could learn about those operands from it.

    Args:
        x: an :class:`EncryptedArray`, or anything with a ``ciphertexts`` array (``Packed``).
        what: what the ciphertexts are, for the message.

    Raises:
        CryptoError: the ciphertexts are not fresh (a :class:`~vfl_cli.errors.VflError`).
    """
    arr = x if isinstance(x, EncryptedArray) else getattr(x, "ciphertexts", None)
    if not isinstance(arr, EncryptedArray):
        raise CryptoError(f"{what}: expected encrypted values, got {type(x).__name__}")
    if not arr.fresh:
        raise CryptoError(
            f"{what} were computed from other ciphertexts and carry no fresh randomness; "
            "pass them through rerandomize() or mask() before they leave this party"
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
    if ebits % _k.WINDOW or ebits < 2 * security_bits(public.bits):
        raise CryptoError(
            f"short_exponent_bits must be a multiple of {_k.WINDOW} and at least "
            f"{2 * security_bits(public.bits)} for a {public.bits}-bit key, got {ebits}"
        )
    _, biggest = _enc.encode(arr, public.n, exponent)  # fail early, in the caller's process
    flat = arr.ravel()
    width = public.width
    tasks = [
        (public.n, public.h, ebits, flat[s], exponent)
        for s in _par.split(flat.size, n_jobs, min_chunk=128, per_worker=2)
    ]
    out: list[mpz] = []
    for blob in _par.run(_k.w_encrypt, tasks, n_jobs):
        out.extend(_k.from_blob(blob, width))
    return EncryptedArray(public, out, arr.shape, exponent, bound=biggest, fresh=True)


def fresh_obfuscators(public: PublicKey, count: int, n_jobs: int | None = None) -> list[mpz]:
    """``count`` uniform ``r**n mod n^2`` values, computed in parallel."""
    # each obfuscator costs a full exponentiation (about 11 ms at 2048 bits): parallelise
    # small counts too when the key is large enough for that to pay off
    min_items = 8 if public.bits >= 1536 else MIN_OBFUSCATE_SMALL_KEY
    slices = _par.split(count, n_jobs, min_chunk=4, min_items=min_items)
    tasks = [(public.n, None, s.stop - s.start) for s in slices]
    out: list[mpz] = []
    for blob in _par.run(_k.w_obfuscate, tasks, n_jobs):
        out.extend(_k.from_blob(blob, public.width))
    return out


def _long_exponent_values(x: EncryptedArray, n_jobs: int | None) -> list[mpz]:
    public = x.public
    if public.h is None:  # no DJN generator: the uniform r**n is the only (and stronger) choice
        return [
            c * r % public.nsquare
            for c, r in zip(x._c, fresh_obfuscators(public, x.size, n_jobs), strict=True)
        ]
    ebits = long_exponent_bits(public.bits)
    width = public.width
    tasks = [
        (public.n, public.h, ebits, _k.to_blob(x._c[s], width))
        for s in _par.split(x.size, n_jobs, min_chunk=128, per_worker=2)
    ]
    out: list[mpz] = []
    for blob in _par.run(_k.w_obfuscate_short, tasks, n_jobs):
        out.extend(_k.from_blob(blob, width))
    return out


def rerandomize(
    x: EncryptedArray,
    *,
    randomiser: Randomiser = "uniform",
    n_jobs: int | None = None,
) -> EncryptedArray:
    """Multiply every ciphertext by a fresh encryption of zero: the result is fresh.

    ``"uniform"`` (default): a uniform ``r**n``, one full exponentiation per ciphertext (about
    11 ms at 2048 bits); safe to send to anyone, even the key holder, who could otherwise
    recover the randomness of a computed result.

    ``"long-exponent"``: ``h**a`` with a fresh ``ceil(bits/2)``-bit exponent ``a`` (the DJN
    paper's length; :func:`long_exponent_bits`), by fixed-base tables: several times faster.
    Even the key holder, who can take discrete logarithms in the smooth part (order ``s``) of
    the group, sees ``a mod s`` statistically uniform for any ``s`` below ``2**(bits/2 - 40)``,
    so nothing of the operands' contribution to the exponent is left; the rest needs a discrete
    logarithm in a large prime-order subgroup. Without ``h`` in the key it falls back to
    ``"uniform"``.

    Raises:
        CryptoError: an unknown ``randomiser``.
    """
    nsq = mpz(x.public.nsquare)
    if randomiser == "uniform":
        obf = fresh_obfuscators(x.public, x.size, n_jobs)
        values = [c * r % nsq for c, r in zip(x._c, obf, strict=True)]
    elif randomiser == "long-exponent":
        values = _long_exponent_values(x, n_jobs)
    else:
        raise CryptoError(f"unknown randomiser {randomiser!r}: 'uniform' or 'long-exponent'")
    return x._like(values, x.shape, fresh=True)
