"""Ed25519 signing identities (PyNaCl / libsodium).

Every artifact manifest and every ledger entry is signed with the party's Ed25519 key. The
private seed never leaves ``keys/`` in the party's workspace; the verify key travels in the
party card. The same key pair, converted to X25519 (libsodium's birational map), is the party's
box key: artifact payloads are sealed to it (see :mod:`vfl_cli.crypto.sealing`), so the card
format does not change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from vfl_cli.errors import KeyMismatch, VflError


def fingerprint_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the fingerprint format used for every key."""
    return hashlib.sha256(data).hexdigest()


def short(fp: str) -> str:
    """The first 16 hex digits of a fingerprint, grouped for reading aloud."""
    return " ".join(fp[i : i + 4] for i in range(0, 16, 4))


@dataclass(frozen=True)
class Signer:
    """A party's Ed25519 signing key."""

    key: SigningKey

    @classmethod
    def generate(cls) -> Signer:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed_hex(cls, seed_hex: str) -> Signer:
        try:
            return cls(SigningKey(bytes.fromhex(seed_hex.strip())))
        except (ValueError, TypeError) as exc:
            raise VflError(f"the signing key file is damaged: {exc}") from exc

    def seed_hex(self) -> str:
        return bytes(self.key).hex()

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.key.verify_key)

    def sign(self, message: bytes) -> str:
        """Return the hex Ed25519 signature of ``message``."""
        return self.key.sign(message).signature.hex()

    def box_key(self) -> PrivateKey:
        """This party's X25519 private key, derived from its Ed25519 signing key."""
        return self.key.to_curve25519_private_key()


@dataclass(frozen=True)
class Verifier:
    """A party's public Ed25519 verify key."""

    key: VerifyKey

    @classmethod
    def from_hex(cls, key_hex: str) -> Verifier:
        try:
            return cls(VerifyKey(bytes.fromhex(key_hex)))
        except (ValueError, TypeError) as exc:
            raise VflError(f"not an Ed25519 verify key: {exc}") from exc

    def hex(self) -> str:
        return bytes(self.key).hex()

    @property
    def fingerprint(self) -> str:
        return fingerprint_bytes(bytes(self.key))

    def box_key(self) -> PublicKey:
        """The party's X25519 public key, derived from its Ed25519 verify key.

        Raises:
            VflError: if the verify key is not a valid curve point (a damaged or crafted card).
        """
        try:
            return self.key.to_curve25519_public_key()
        except CryptoError as exc:  # libsodium refuses small-order and non-canonical points
            raise VflError(
                f"signing key {short(self.fingerprint)} is not a usable curve point, so nothing "
                "can be sealed to it; ask its owner for a new party card"
            ) from exc

    def verify(self, message: bytes, signature_hex: str, *, what: str) -> None:
        """Check a signature; raise :class:`KeyMismatch` naming ``what`` if it is not valid."""
        try:
            self.key.verify(message, bytes.fromhex(signature_hex))
        except (BadSignatureError, ValueError, TypeError) as exc:
            raise KeyMismatch(
                f"{what}: the signature does not match signing key {short(self.fingerprint)}"
                " (tampered, or signed by someone else)"
            ) from exc
