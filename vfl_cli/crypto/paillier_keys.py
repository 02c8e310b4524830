"""Paillier keys: phe keys plus the DJN generator ``h``, JWK (de)serialisation, CRT decryption.

With :mod:`~vfl_cli.crypto.paillier_array` this is one of the only modules that import
:mod:`phe`. Reach it through :mod:`vfl_cli.crypto.paillier`.
"""

from __future__ import annotations

import binascii
import hashlib
import math
import secrets
from typing import TYPE_CHECKING, Any

import numpy as np
import phe
from gmpy2 import powmod
from phe.util import base64_to_int, int_to_base64

from vfl_cli.crypto import encoding as _enc
from vfl_cli.crypto import paillier_kernels as _k
from vfl_cli.crypto import parallel as _par
from vfl_cli.errors import CryptoError, EncodingOverflow, InvalidArtifact, KeyMismatch

if TYPE_CHECKING:
    from vfl_cli.crypto.paillier_array import EncryptedArray

__all__ = [
    "PrivateKey",
    "PublicKey",
    "generate_keypair",
    "long_exponent_bits",
    "security_bits",
    "short_exponent_bits",
]


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


def long_exponent_bits(modulus_bits: int) -> int:
    """Bit length of the long DJN exponent: ``ceil(bits / 2)`` rounded up to whole bytes.

    The DJN paper's length (1024 bits at 2048), never shorter than :func:`short_exponent_bits`.
    Used by ``rerandomize(x, randomiser="long-exponent")`` for ciphertexts going to the key
    holder, who can take discrete logarithms in the smooth part of the group.
    """
    return max(short_exponent_bits(modulus_bits), -(-modulus_bits // 16) * 8)


def _b64(x: int) -> str:
    return str(int_to_base64(int(x)))


def _unb64(d: dict[str, Any], member: str, what: str) -> int:
    try:
        return int(base64_to_int(d[member]))
    except KeyError:
        raise InvalidArtifact(f"{what}: member {member!r} is missing") from None
    except (TypeError, ValueError, binascii.Error):
        raise InvalidArtifact(f"{what}: member {member!r} is not base64url") from None


def _fingerprint(n: int, h: int | None) -> str:
    digest = hashlib.sha256(b"vfl-paillier-v1\0")
    for part in (n, h):
        raw = b"" if part is None else part.to_bytes(_k.width_of(part), "big")
        digest.update(len(raw).to_bytes(4, "big") + raw)
    return digest.hexdigest()


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
        self.width = _k.width_of(self.nsquare)
        self.short_exponent_bits = short_exponent_bits(self.bits)
        self.fingerprint = _fingerprint(n, h)

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

    def check_key(self, public: PublicKey) -> None:
        """Refuse ciphertexts under another key.

        Raises:
            KeyMismatch: ``public`` is not this key's public half.
        """
        if public.n != self.public.n:
            raise KeyMismatch(
                f"the ciphertexts were encrypted under key {public.fingerprint[:16]}…, this "
                f"private key is {self.public.fingerprint[:16]}…"
            )

    def decrypt_raw(self, x: EncryptedArray, *, n_jobs: int | None = None) -> list[int]:
        """Decrypt to residues modulo ``n`` (flat, C order), e.g. masked values for a peer."""
        self.check_key(x.public)
        nw = _k.width_of(self.public.n)
        values = x.raw_ciphertexts()
        tasks = [
            (self._p, self._q, _k.to_blob(values[s], self.public.width))
            for s in _par.split(len(values), n_jobs, min_chunk=8, min_items=256)
        ]
        out: list[int] = []
        for blob in _par.run(_k.w_decrypt, tasks, n_jobs):
            out.extend(int(v) for v in _k.from_blob(blob, nw))
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

    Raises:
        CryptoError: ``bits`` is too small to hold fixed-point values.
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
