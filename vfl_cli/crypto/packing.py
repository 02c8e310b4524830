"""Masking and slot packing of Paillier ciphertexts: one packer, one public slot layout.

Reach it through :mod:`vfl_cli.crypto.paillier`. A :class:`SlotLayout` says how values sit in
one plaintext (``slots`` per ciphertext, ``slot_bits`` each, a public ``offset``, or signed
slots that borrow from their neighbours); :func:`pack` builds offset layouts, protocols that
pack on the plaintext side (``plaintext * 2**layout.shift(j)`` before a product) read their
slots back with :meth:`SlotLayout.read_residue`. Nothing else should pick slots apart.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gmpy2 import mpz, powmod

from vfl_cli.crypto import encoding as _enc
from vfl_cli.crypto import paillier_kernels as _k
from vfl_cli.crypto.paillier_array import EncryptedArray, Randomiser, rerandomize
from vfl_cli.crypto.paillier_keys import PrivateKey, PublicKey
from vfl_cli.errors import CryptoError, EncodingOverflow, InvalidArtifact

GUARD_BITS = 2
"""Spare bits on top of every packed slot: an overflowing slot is detected, not carried."""

__all__ = [
    "GUARD_BITS",
    "Mask",
    "Packed",
    "SlotLayout",
    "decrypt_packed",
    "mask",
    "pack",
    "unmask",
    "unmask_residues",
    "unpack",
    "unpack_masked",
]


# --------------------------------------------------------------------------------------------
# slot layout


@dataclass(frozen=True)
class SlotLayout:
    """How values sit in one Paillier plaintext.

    Offset layout (``signed=False``, what :func:`pack` makes): slot ``j`` holds
    ``v_j + offset`` in ``slot_bits`` bits, ``0 <= v_j + offset <= 2 * offset``, with
    :data:`GUARD_BITS` spare bits on top; the plaintext is
    ``sum_j (v_j + offset) 2**(slot_bits j)``.

    Signed layout (``signed=True``, ``offset == 0``): the plaintext is the signed integer
    ``sum_j v_j 2**(slot_bits j)`` with ``|v_j| < 2**(slot_bits - 1)``, each slot borrowing from
    the next; it stays below ``n / 2`` in magnitude.

    Attributes:
        slot_bits: width of a slot in bits.
        slots: slots per ciphertext.
        offset: public shift that makes values non-negative (0 for signed layouts).
        signed: whether slots are signed (borrowing) rather than offset.
    """

    slot_bits: int
    slots: int
    offset: int
    signed: bool = False

    @classmethod
    def for_bound(cls, key_bits: int, bound: int) -> SlotLayout:
        """The offset layout :func:`pack` uses for values ``|v| <= bound`` under a key.

        Raises:
            EncodingOverflow: one slot would not fit the key.
        """
        slot_bits = (2 * bound).bit_length() + GUARD_BITS
        slots = (key_bits - 1) // slot_bits
        if slots < 1:
            raise EncodingOverflow(f"a {slot_bits}-bit slot does not fit a {key_bits}-bit key")
        return cls(slot_bits, slots, bound)

    @classmethod
    def for_value_bits(cls, key_bits: int, value_bits: int) -> SlotLayout:
        """The offset layout for values ``|v| <= 2**value_bits`` (``pack(x, value_bits=...)``)."""
        return cls.for_bound(key_bits, 1 << value_bits)

    @classmethod
    def signed_slots(cls, key_bits: int, slot_bits: int, limit: int | None = None) -> SlotLayout:
        """A signed layout: as many ``slot_bits`` slots as keep the sum below ``n / 2``.

        Args:
            key_bits: bit length of ``n``.
            slot_bits: width of a slot.
            limit: an upper bound on the number of slots (``None`` or 0: none).
        """
        count = (key_bits - 2) // slot_bits
        return cls(slot_bits, max(1, min(count, limit) if limit else count), 0, signed=True)

    def ciphertexts(self, count: int) -> int:
        """Ciphertexts needed for ``count`` values."""
        return -(-count // self.slots)

    def used(self, k: int, count: int) -> int:
        """Slots used in ciphertext ``k`` when ``count`` values are packed."""
        return min(self.slots, count - k * self.slots)

    def shift(self, j: int) -> int:
        """Bit position of slot ``j``: a value ``v`` sits there as ``v * 2**shift(j)``."""
        return self.slot_bits * j

    def offset_plaintext(self, used: int) -> int:
        """``offset * sum_j 2**(slot_bits j)`` over ``used`` slots: what packing adds."""
        return sum(self.offset << self.shift(j) for j in range(used))

    def check_fits(self, key_bits: int) -> None:
        """Refuse a layout (e.g. read from an artifact) that does not fit a key.

        Raises:
            InvalidArtifact: the layout is malformed for ``key_bits``.
        """
        if self.slots < 1 or self.slot_bits < 1 or self.slot_bits * self.slots >= key_bits:
            raise InvalidArtifact(
                f"packed layout: {self.slots} slots of {self.slot_bits} bits do not fit a "
                f"{key_bits}-bit key"
            )
        if self.signed and self.offset:
            raise InvalidArtifact("packed layout: a signed layout has no offset")
        if not 0 <= 2 * self.offset < 1 << (self.slot_bits - GUARD_BITS) and not self.signed:
            raise InvalidArtifact("packed layout: offset or shape inconsistent with the slots")

    def read(self, plain: int, used: int) -> list[int]:
        """The ``used`` signed values of one plaintext (non-negative for offset layouts,
        signed for signed layouts).

        Raises:
            EncodingOverflow: a value overflowed its slot (it would corrupt its neighbours).
        """
        if self.signed:
            return self._read_signed(plain, used)
        if plain >> self.shift(used):
            raise EncodingOverflow("a packed plaintext overflowed its slots")
        width_mask = (1 << self.slot_bits) - 1
        out = []
        for j in range(used):
            s = (plain >> self.shift(j)) & width_mask
            if s > 2 * self.offset:
                raise EncodingOverflow(
                    "a packed slot overflowed its headroom: a value exceeded its declared bound"
                )
            out.append(s - self.offset)
        return out

    def _read_signed(self, v: int, used: int) -> list[int]:
        top, full = 1 << (self.slot_bits - 1), 1 << self.slot_bits
        out = []
        for _ in range(used):
            r = v & (full - 1)
            if r >= top:
                r -= full
            out.append(r)
            v = (v - r) >> self.slot_bits
        if v:
            raise EncodingOverflow(
                "a packed value overflowed its slot: the computation exceeded its public bound"
            )
        return out

    def read_residue(self, residue: int, n: int, used: int | None = None) -> list[int]:
        """:meth:`read` a decrypted residue modulo ``n`` (signed layouts: above ``n // 2`` is
        negative); ``used`` defaults to every slot."""
        count = self.slots if used is None else used
        if self.signed and residue > n // 2:
            residue -= n
        return self.read(residue, count)

    def read_all(self, residues: Sequence[int], n: int, count: int) -> list[int]:
        """The ``count`` signed values packed in ``residues`` (one per ciphertext, in order).

        Raises:
            CryptoError: ``residues`` is not one per ciphertext of ``count`` values.
            EncodingOverflow: a slot overflowed.
        """
        if len(residues) != self.ciphertexts(count):
            raise CryptoError(
                f"{len(residues)} packed plaintexts for {count} values, expected "
                f"{self.ciphertexts(count)}"
            )
        out: list[int] = []
        for k, r in enumerate(residues):
            out.extend(self.read_residue(int(r), n, self.used(k, count)))
        return out


# --------------------------------------------------------------------------------------------
# masking


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


def _mask_bound(x: EncryptedArray, value_bits: int | None, stat_bits: int) -> int | None:
    """The bound ``B`` of a bounded mask of ``x``, or ``None`` for a full-domain mask.

    Raises:
        EncodingOverflow: ``x.bound`` exceeds ``2**value_bits``.
    """
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
    if bound is not None and 2 * bound + (1 << _mask_bits(bound, stat_bits)) > x.public.max_int:
        return None  # too wide to be useful: fall back to a full-domain mask
    return bound


def _mask_bits(bound: int, stat_bits: int) -> int:
    """Bits of the random offsets of a bounded mask."""
    return (2 * bound).bit_length() + stat_bits


def mask(
    x: EncryptedArray,
    *,
    rng: random.Random | None = None,
    stat_bits: int = 40,
    value_bits: int | None = None,
    randomiser: Randomiser = "uniform",
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
        randomiser: how :func:`rerandomize` re-randomises the result (default uniform ``r**n``).
        n_jobs: workers for the re-randomisation.

    Returns:
        The masked, re-randomised (fresh) array and the :class:`Mask` to keep.

    Raises:
        EncodingOverflow: ``x.bound`` exceeds ``2**value_bits``.
    """
    rand = rng if rng is not None else secrets.SystemRandom()
    n = x.public.n
    bound = _mask_bound(x, value_bits, stat_bits)
    shift = 0 if bound is None else bound
    if bound is not None:
        rbits = _mask_bits(bound, stat_bits)
        offsets = tuple(rand.getrandbits(rbits) for _ in range(x.size))
        out_bound: int | None = 2 * bound + (1 << rbits)
    else:
        offsets = tuple(rand.randrange(n) for _ in range(x.size))
        out_bound = None
    N, nsq = mpz(n), mpz(x.public.nsquare)
    added = [
        _k.add_plain(c, (r + shift) % n, N, nsq)
        for c, r in zip(x.raw_ciphertexts(), offsets, strict=True)
    ]
    raw = EncryptedArray(x.public, added, x.shape, x.exponent, bound=out_bound)
    masked = rerandomize(raw, randomiser=randomiser, n_jobs=n_jobs)
    return masked, Mask(x.public.fingerprint, n, x.exponent, x.shape, offsets, shift, bound)


def unmask_residues(raw: Sequence[int], m: Mask) -> list[int]:
    """Subtract a mask modulo ``n``: the residues the unmasked values would decrypt to.

    Raises:
        CryptoError: the number of values differs from the mask's.
    """
    if len(raw) != len(m.offsets):
        raise CryptoError(f"{len(raw)} values returned for a mask of {len(m.offsets)}")
    return [(int(y) - r - m.shift) % m.n for y, r in zip(raw, m.offsets, strict=True)]


def unmask(raw: Sequence[int], m: Mask) -> np.ndarray:
    """Undo a mask exactly: subtract it modulo ``n`` and decode the fixed-point values.

    Args:
        raw: residues modulo ``n`` from :meth:`PrivateKey.decrypt_raw` or :func:`decrypt_packed`.
        m: the mask kept by :func:`mask`.

    Raises:
        CryptoError: the number of values differs from the mask's.
        EncodingOverflow: a value exceeds its bound (or the plaintext space): it overflowed.
    """
    limit = m.bound if m.bound is not None else _enc.max_int(m.n)
    out = []
    for v in unmask_residues(raw, m):
        if v > m.n // 2:
            v -= m.n
        if abs(v) > limit:
            raise EncodingOverflow(
                "an unmasked value exceeds its bound: the computation overflowed the declared "
                "headroom; use a larger value_bits"
            )
        out.append(v)
    return _enc.decode(out, m.exponent).reshape(m.shape)


# --------------------------------------------------------------------------------------------
# packing


@dataclass(frozen=True)
class Packed:
    """Several fixed-point slots per ciphertext, for one decryption per ``slots`` values.

    Slot ``j`` of a ciphertext holds ``v_j + offset`` in ``slot_bits`` bits, with
    ``0 <= v_j + offset <= 2 * offset < 2**(slot_bits - GUARD_BITS)`` (:attr:`layout`).

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

    @property
    def layout(self) -> SlotLayout:
        """The slot layout of every ciphertext."""
        return SlotLayout(self.slot_bits, self.slots, self.offset)

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
        layout, count, shape, exponent = _layout_from_meta(meta, public.bits)
        try:
            ncts = int(meta["ciphertexts"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArtifact(f"packed layout: bad or missing member ({exc})") from None
        if ncts != layout.ciphertexts(count):
            raise InvalidArtifact(f"packed layout: {ncts} ciphertexts for {count} values")
        cts = EncryptedArray.from_bytes(public, data, (ncts,), exponent)
        return cls(cts, count, shape, exponent, layout.slot_bits, layout.slots, layout.offset)


def _layout_from_meta(
    meta: Mapping[str, Any], key_bits: int
) -> tuple[SlotLayout, int, tuple[int, ...], int]:
    """``(layout, count, shape, exponent)`` of a :meth:`Packed.meta`, checked against a key."""
    try:
        count, slots, slot_bits = int(meta["count"]), int(meta["slots"]), int(meta["slot_bits"])
        shape = tuple(int(s) for s in meta["shape"])
        exponent, offset = int(meta["exponent"]), int(str(meta["offset"]), 16)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArtifact(f"packed layout: bad or missing member ({exc})") from None
    layout = SlotLayout(slot_bits, slots, offset)
    layout.check_fits(key_bits)
    if int(np.prod(shape, dtype=np.int64)) != count:
        raise InvalidArtifact("packed layout: offset or shape inconsistent with the slots")
    return layout, count, shape, exponent


def _pack_bound(x: EncryptedArray, value_bits: int | None) -> int:
    if value_bits is not None:
        if x.bound is not None and x.bound > 1 << value_bits:
            raise EncodingOverflow(
                f"values may need {x.bound.bit_length()} bits, more than value_bits={value_bits}"
            )
        return 1 << value_bits
    if x.bound is not None:
        return x.bound
    raise EncodingOverflow(
        "cannot pack values of unknown magnitude: pass value_bits, mask() with value_bits, "
        "or declare a bound with with_bound()"
    )


def pack(x: EncryptedArray, *, value_bits: int | None = None, n_jobs: int | None = None) -> Packed:
    """Pack the values of ``x`` into as few ciphertexts as the key allows.

    The headroom comes from ``value_bits`` (``|v| <= 2**value_bits``) or else from ``x.bound``
    (a masked array from :func:`mask` has one); the layout is
    ``SlotLayout.for_bound(key bits, bound)``. Outputs are re-randomised unless ``x`` is fresh.

    Raises:
        EncodingOverflow: no bound is known, ``x.bound`` exceeds ``2**value_bits``, or one slot
            would not fit the key.
    """
    layout = SlotLayout.for_bound(x.public.bits, _pack_bound(x, value_bits))
    nsq, N = mpz(x.public.nsquare), mpz(x.public.n)
    shift = 1 << layout.slot_bits
    cts = x.raw_ciphertexts()
    out = []
    for start in range(0, x.size, layout.slots):
        group = cts[start : start + layout.slots]
        acc = group[-1]
        for c in reversed(group[:-1]):
            acc = powmod(acc, shift, nsq) * c % nsq
        plain = layout.offset_plaintext(len(group)) % x.public.n
        out.append(_k.add_plain(acc, plain, N, nsq))
    packed = EncryptedArray(x.public, out, (len(out),), x.exponent, fresh=x.fresh)
    if not x.fresh:
        packed = rerandomize(packed, n_jobs=n_jobs)
    return Packed(
        packed, x.size, x.shape, x.exponent, layout.slot_bits, layout.slots, layout.offset
    )


def decrypt_packed(priv: PrivateKey, p: Packed, *, n_jobs: int | None = None) -> list[int]:
    """Decrypt packed ciphertexts (one decryption per ``p.slots`` values) to raw slot integers.

    Returns residues modulo ``n`` like :meth:`PrivateKey.decrypt_raw` would for the unpacked
    array, so :func:`unmask` (masked values) or :func:`unpack` (plain values) apply unchanged.

    Raises:
        KeyMismatch: another key.
        EncodingOverflow: a slot overflowed its headroom.
    """
    priv.check_key(p.public)
    n = priv.public.n
    residues = priv.decrypt_raw(p.ciphertexts, n_jobs=n_jobs)
    return [v % n for v in p.layout.read_all(residues, n, p.count)]


def unpack(raw: Sequence[int], p: Packed) -> np.ndarray:
    """Decode the raw slot integers of an unmasked :class:`Packed` to float64 values."""
    n = p.public.n
    ints = [_enc.signed(int(r), n) for r in raw]
    if any(abs(v) > p.offset for v in ints):
        raise EncodingOverflow("a packed value exceeds its bound")
    return _enc.decode(ints, p.exponent).reshape(p.shape)


def unpack_masked(raw: Sequence[int], m: Mask, meta: Mapping[str, Any]) -> np.ndarray:
    """Values of packed ciphertexts that were then masked (``mask(pack(x).ciphertexts)``).

    The masking party's side: ``raw`` are the key holder's decryptions of the masked packed
    ciphertexts, ``m`` the mask it kept and ``meta`` the :meth:`Packed.meta` of the packing.

    Returns:
        The packed values as float64, 1-D.

    Raises:
        InvalidArtifact: ``meta`` is malformed for the mask's key.
        CryptoError: not one residue per packed ciphertext.
        EncodingOverflow: a residue does not unmask to a valid packed plaintext (a wrong key, a
            tampered reply or an overflow).
    """
    layout, count, _, exponent = _layout_from_meta(meta, m.n.bit_length())
    values = layout.read_all(unmask_residues(raw, m), m.n, count)
    return _enc.decode(values, exponent)
