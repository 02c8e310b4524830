"""Plaintext-by-ciphertext matrix products (multi-exponentiation chunked over workers).

Reach them through :mod:`vfl_cli.crypto.paillier`. Results are not fresh: :func:`mask` or
:func:`rerandomize` them before they leave the party.
"""

from __future__ import annotations

import numpy as np
from gmpy2 import mpz

from vfl_cli.crypto import encoding as _enc
from vfl_cli.crypto import paillier_kernels as _k
from vfl_cli.crypto import parallel as _par
from vfl_cli.crypto.paillier_array import EXPONENT, EncryptedArray
from vfl_cli.errors import CryptoError, EncodingOverflow

__all__ = ["enc_matmul", "plain_matmul"]

_INT64_SAFE = 2.0**62


def _encode_matrix(X: np.ndarray, exponent: int) -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    if A.size and not np.all(np.isfinite(A)):
        raise EncodingOverflow("the plaintext matrix holds NaN or infinite values")
    scaled = _enc.scaled(A, exponent)
    if A.size and float(np.max(np.abs(scaled))) >= _INT64_SAFE:
        top = float(_enc.real_values(_INT64_SAFE, exponent))
        raise EncodingOverflow(
            f"plaintext matrix values up to {top:g} are supported at exponent {exponent}; "
            "scale the data down"
        )
    return scaled.astype(np.int64)


def _l1_bound(E: EncryptedArray, lines: np.ndarray) -> int | None:
    """Bound of a product whose outputs combine ``E`` with the integer ``lines`` (rows)."""
    if E.bound is None:
        return None
    l1 = max((sum(abs(int(v)) for v in r.tolist()) for r in lines), default=0)
    return E.check_bound(l1 * E.bound)


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
    squeeze = A.ndim == 1
    if squeeze:
        A = A[None, :]
    if A.ndim != 2 or E.ndim not in (1, 2) or A.shape[1] != E.shape[0]:
        raise CryptoError(f"cannot multiply a plain {np.shape(X)} matrix by encrypted {E.shape}")
    xenc = _encode_matrix(A, exponent)
    k, rows = xenc.shape
    cols = 1 if E.ndim == 1 else E.shape[1]
    bound = _l1_bound(E, xenc)
    width = E.public.width
    nsq = mpz(E.public.nsquare)
    cts = E.raw_ciphertexts()
    tasks = [
        (
            E.public.n,
            _k.to_blob(cts[s.start * cols : s.stop * cols], width),
            cols,
            np.ascontiguousarray(xenc[:, s]),
        )
        for s in _par.split(rows, n_jobs, min_chunk=2048)
    ]
    acc: list[mpz] | None = None
    for blob in _par.run(_k.w_plain_matmul, tasks, n_jobs):
        part = _k.from_blob(blob, width)
        acc = part if acc is None else [a * b % nsq for a, b in zip(acc, part, strict=True)]
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
    bound = _l1_bound(E, wenc.T)
    width = E.public.width
    cts = E.raw_ciphertexts()
    # a row costs about k*m multiplications: parallelise once there are a few thousand
    per_row = max(1, k * m)
    slices = _par.split(
        rows,
        n_jobs,
        min_chunk=max(1, 512 // per_row),
        per_worker=2,
        min_items=max(2, 4096 // per_row),
    )
    tasks = [
        (E.public.n, _k.to_blob(cts[s.start * k : s.stop * k], width), k, wenc) for s in slices
    ]
    out: list[mpz] = []
    for blob in _par.run(_k.w_enc_matmul, tasks, n_jobs):
        out.extend(_k.from_blob(blob, width))
    shape = (rows,) if vector else (rows, m)
    return EncryptedArray(E.public, out, shape, E.exponent + exponent, bound=bound)
