"""A fast vectorised Paillier engine on python-paillier (phe) keys: the public import path.

Use the engine as ``from vfl_cli.crypto import paillier`` and ``paillier.X``; the code lives in
small modules split along python-paillier's lines:

* :mod:`~vfl_cli.crypto.paillier_keys`: :class:`PublicKey`, :class:`PrivateKey` (CRT
  decryption), :func:`generate_keypair`, exponent lengths;
* :mod:`~vfl_cli.crypto.paillier_kernels`: raw integer kernels run in worker processes (the
  modular tricks written once, per-process caches, multi-exponentiation); private to crypto/;
* :mod:`~vfl_cli.crypto.paillier_array`: :class:`EncryptedArray`, :func:`encrypt`,
  :func:`rerandomize`, :func:`require_fresh`, :func:`concatenate`, :func:`add_ints`;
* :mod:`~vfl_cli.crypto.paillier_matmul`: :func:`plain_matmul`, :func:`enc_matmul`;
* :mod:`~vfl_cli.crypto.packing`: :func:`mask`/:func:`unmask`, :class:`SlotLayout`,
  :func:`pack`/:class:`Packed`/:func:`decrypt_packed`/:func:`unpack`/:func:`unpack_masked`.

Only these modules import :mod:`phe`. Keys are phe keys (plus the public DJN generator ``h``),
encodings are phe's base-16 ``EncodedNumber`` with the fixed exponent :data:`EXPONENT`
(:mod:`vfl_cli.crypto.encoding`), and ciphertexts are phe ciphertexts: an engine ciphertext
decrypts with ``phe.PaillierPrivateKey`` (:meth:`EncryptedArray.to_phe`) and phe's ciphertexts
enter the engine with :meth:`EncryptedArray.from_phe`.

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
:func:`rerandomize`) before they leave the party; :func:`require_fresh` refuses them.
:func:`mask` re-randomises with a uniform ``r**n`` by default, not the short-exponent form,
because its output goes to the key holder; ``randomiser="long-exponent"`` is the faster
alternative with a ``ceil(bits/2)``-bit DJN exponent (see :func:`rerandomize`).
"""

from __future__ import annotations

from vfl_cli.crypto.packing import (
    GUARD_BITS,
    Mask,
    Packed,
    SlotLayout,
    decrypt_packed,
    mask,
    pack,
    unmask,
    unmask_residues,
    unpack,
    unpack_masked,
)
from vfl_cli.crypto.paillier_array import (
    EXPONENT,
    EncryptedArray,
    Randomiser,
    add_ints,
    concatenate,
    encrypt,
    require_fresh,
    rerandomize,
)
from vfl_cli.crypto.paillier_keys import (
    PrivateKey,
    PublicKey,
    generate_keypair,
    long_exponent_bits,
    security_bits,
    short_exponent_bits,
)
from vfl_cli.crypto.paillier_matmul import enc_matmul, plain_matmul

__all__ = [
    "EXPONENT",
    "GUARD_BITS",
    "EncryptedArray",
    "Mask",
    "Packed",
    "PrivateKey",
    "PublicKey",
    "Randomiser",
    "SlotLayout",
    "add_ints",
    "concatenate",
    "decrypt_packed",
    "enc_matmul",
    "encrypt",
    "generate_keypair",
    "long_exponent_bits",
    "mask",
    "pack",
    "plain_matmul",
    "require_fresh",
    "rerandomize",
    "security_bits",
    "short_exponent_bits",
    "unmask",
    "unmask_residues",
    "unpack",
    "unpack_masked",
]
