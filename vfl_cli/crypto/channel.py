"""A one-job secret channel between two parties: ephemeral X25519 agreement, then a sealed box.

Used where a protocol value must reach one peer and nobody who carries the files (the artifacts
are signed, not encrypted): each party draws an ephemeral X25519 key pair from its own CSPRNG,
sends the public half in a signed artifact, and both derive
``key = BLAKE2b-256(key = X25519(secret, peer public), person = "vfl-channel-v1", context)``.
The context names the job and both parties, so a key never serves two jobs or two directions
of the same pair by accident. :func:`seal` is libsodium's ``crypto_secretbox`` (XSalsa20-Poly1305)
with a fresh random nonce. Security rests on the computational Diffie-Hellman problem on
Curve25519; the artifact signatures rule out a man in the middle.
"""

from __future__ import annotations

import hashlib
import secrets
from random import Random

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError as _NaclCryptoError
from nacl.exceptions import RuntimeError as _NaclRuntimeError
from nacl.secret import SecretBox

from vfl_cli.crypto.ecdh import new_scalar
from vfl_cli.errors import InvalidArtifact

__all__ = ["PUBLIC_BYTES", "channel_key", "new_exchange", "open_sealed", "seal"]

PUBLIC_BYTES = 32
_PERSON = b"vfl-channel-v1"


def new_exchange(rng: Random | None = None) -> tuple[bytes, bytes]:
    """A fresh ephemeral X25519 key pair ``(secret, public)`` (OS CSPRNG unless ``rng``)."""
    secret = new_scalar(rng)
    return secret, crypto_scalarmult_base(secret)


def channel_key(secret: bytes, peer_public: object, context: bytes, *, what: str) -> bytes:
    """The 32-byte key shared with the peer whose public half is ``peer_public``.

    Raises:
        InvalidArtifact: the peer's public half is not 32 bytes or is a point of small order
            (the shared value would be zero, known to anyone).
    """
    if not isinstance(peer_public, bytes) or len(peer_public) != PUBLIC_BYTES:
        raise InvalidArtifact(f"{what}: the key-exchange public key is not {PUBLIC_BYTES} bytes")
    try:
        shared = crypto_scalarmult(secret, peer_public)
    except _NaclRuntimeError as exc:  # libsodium refuses an all-zero result (small order)
        raise InvalidArtifact(f"{what}: the key-exchange public key is of small order") from exc
    return hashlib.blake2b(context, digest_size=32, key=shared, person=_PERSON).digest()


def seal(key: bytes, plaintext: bytes, rng: Random | None = None) -> bytes:
    """Encrypt and authenticate ``plaintext`` under ``key`` (nonce || box)."""
    nonce = rng.randbytes(SecretBox.NONCE_SIZE) if rng is not None else secrets.token_bytes(
        SecretBox.NONCE_SIZE
    )
    return bytes(SecretBox(key).encrypt(plaintext, nonce))


def open_sealed(key: bytes, sealed: object, *, what: str) -> bytes:
    """The plaintext :func:`seal` sealed under ``key``.

    Raises:
        InvalidArtifact: ``sealed`` is not bytes, or was not sealed under this key, or changed.
    """
    if not isinstance(sealed, bytes) or len(sealed) < SecretBox.NONCE_SIZE + SecretBox.MACBYTES:
        raise InvalidArtifact(f"{what} is not a sealed box")
    try:
        return bytes(SecretBox(key).decrypt(sealed))
    except _NaclCryptoError as exc:
        raise InvalidArtifact(
            f"{what} does not open with this party's channel key (another job's, or changed)"
        ) from exc
