"""Payload confidentiality: artifact members readable by their recipient and sender alone.

Each artifact gets a fresh 256-bit content key from the sender's CSPRNG (libsodium's
``randombytes``). Every payload member is encrypted under it with XSalsa20-Poly1305
(libsodium's ``crypto_secretbox_easy``); the nonce of the i-th member (in name order) is the
number i, which is unique because a content key encrypts one artifact only, and which binds each
member to its place (members swapped between names do not decrypt). The content key is sealed
(``nacl.public.SealedBox``: ephemeral X25519 + XSalsa20-Poly1305) twice, to the recipient and to
the sender, whose X25519 keys are derived from the Ed25519 keys on their party cards.

The manifest also carries a commitment to the content key (a domain-separated SHA-256 of it).
Poly1305 does not commit to its key, so without it a dishonest sender could seal two different
keys, one to the recipient and one to itself, under which the same ciphertext opens to two
different plaintexts; its archive would then show other values than the ones it sent. With the
commitment signed in the manifest, both sealed keys must be the same key, and a given
ciphertext opens to one plaintext only.
"""

from __future__ import annotations

import hashlib

import nacl.utils
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.secret import SecretBox

try:
    from nacl.bindings import crypto_secretbox_easy as _seal
    from nacl.bindings import crypto_secretbox_open_easy as _open
except ImportError:  # older PyNaCl: the classic API gives the same bytes, with one more copy
    from nacl.bindings import crypto_secretbox as _seal
    from nacl.bindings import crypto_secretbox_open as _open

from vfl_cli.errors import InvalidArtifact

CIPHER = "xsalsa20-poly1305"
KEY_BYTES = SecretBox.KEY_SIZE
#: Bytes a member grows by when encrypted: its Poly1305 tag.
OVERHEAD = SecretBox.MACBYTES
#: Length of a sealed content key: ephemeral public key, tag, key.
SEALED_KEY_BYTES = 32 + SecretBox.MACBYTES + KEY_BYTES
_COMMIT_DOMAIN = b"vfl-artifact content-key commitment v2\x00"


def new_content_key() -> bytes:
    """A fresh random content key (never derived from anything another party knows)."""
    return nacl.utils.random(KEY_BYTES)


def commitment(key: bytes) -> str:
    """Hex commitment to ``key``; reveals nothing about a uniformly random key."""
    return hashlib.sha256(_COMMIT_DOMAIN + key).hexdigest()


def seal_key(key: bytes, to: PublicKey) -> str:
    """``key`` sealed to the X25519 public key ``to``, as hex."""
    return bytes(SealedBox(to).encrypt(key)).hex()


def open_key(sealed_hex: str, expected_commitment: str, box_key: PrivateKey, *, what: str) -> bytes:
    """Open a sealed content key with this party's X25519 private key and check its commitment.

    Raises:
        InvalidArtifact: if the key was not sealed to this party or is not the committed key.
    """
    try:
        key = SealedBox(box_key).decrypt(bytes.fromhex(sealed_hex))
    except (CryptoError, ValueError) as exc:
        raise InvalidArtifact(
            f"{what}: its content key was not sealed to this party's key (or was damaged)"
        ) from exc
    if len(key) != KEY_BYTES or commitment(key) != expected_commitment:
        raise InvalidArtifact(f"{what}: its sealed content key does not match the signed commitment")
    return key


def _nonce(index: int) -> bytes:
    return index.to_bytes(SecretBox.NONCE_SIZE, "big")


def encrypt(key: bytes, index: int, plaintext: bytes) -> bytes:
    """``ciphertext || tag`` of the ``index``-th member under ``key`` (a single-use key)."""
    return _seal(plaintext, _nonce(index), key)


def decrypt(key: bytes, index: int, sealed: bytes, *, what: str) -> bytes:
    """Decrypt the ``index``-th member; raise :class:`InvalidArtifact` naming ``what`` if it fails."""
    try:
        return _open(sealed, _nonce(index), key)
    except (CryptoError, TypeError) as exc:
        raise InvalidArtifact(f"{what} does not decrypt under the artifact's content key") from exc
