"""X25519 blinding for ECDH private set intersection (libsodium through PyNaCl).

Everything here works on numpy ``(n, 32)`` ``uint8`` arrays of X25519 u-coordinates
(little-endian, RFC 7748), one row per id, and runs on every core.

* :func:`hash_to_points` maps ids to points of Curve25519 itself, never of its quadratic twist.
  X25519 computes happily on twist points, but it keeps a point on the curve or on the twist, and
  anyone can tell which (a Legendre symbol): hashing straight to a u-coordinate would let the
  receiver of a blinded set learn, for every blinded id, one bit of a public function of the id,
  and so how many of the sender's ids hash to the twist. Rejection sampling keeps that bit
  constant, at a cost of about 6 microseconds per id.
* :func:`blind` raises every point to a secret scalar with libsodium's ``crypto_scalarmult``
  (X25519). Blinding commutes: ``blind(blind(P, a), b) == blind(blind(P, b), a)``.
* :func:`check_points` is what a receiver runs on a peer's points before using them.

No curve arithmetic is written here: scalar multiplication is libsodium's constant-time X25519;
the only field arithmetic is the public curve-membership test during hashing (gmpy2), which
touches the party's own ids, never secrets received from anyone.

Parallelism: the work is split into chunks run by worker processes (hashing is Python code bound
by the GIL, so threads would not help it); each chunk is pickled to its worker and back. Under
``vfl --dask-scheduler`` (:func:`vfl_cli.crypto.parallel.use_dask`) the same chunks go to the
party's Dask cluster instead. On Linux,
when the caller is single-threaded, workers are forked (instant); otherwise (another thread is
running, or another OS) they come from a clean "forkserver" process. :func:`run` puts several
batches (say a peer's points to blind and the party's own ids to hash and blind) on one pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from multiprocessing import get_all_start_methods, get_context
from random import Random
from typing import Any

import numpy as np
from gmpy2 import from_binary, jacobi, mpz

from vfl_cli.errors import CryptoError

try:  # the raw cffi library PyNaCl is built on: no per-call argument checks or bytes copies
    from nacl._sodium import ffi as _ffi  # type: ignore[import-not-found]
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - PyNaCl moved its private module
    _ffi = None
    _lib = None
from nacl.bindings import crypto_scalarmult as _nacl_scalarmult

__all__ = [
    "POINT_BYTES",
    "SCALAR_BYTES",
    "SmallOrderPoints",
    "Work",
    "Workers",
    "blind",
    "check_points",
    "default_n_jobs",
    "find_duplicates",
    "hash_to_points",
    "new_invertible_scalar",
    "new_scalar",
    "run",
]

POINT_BYTES = 32
SCALAR_BYTES = 32

_P = 2**255 - 19
_ORDER = 2**252 + 27742317777372353535851937790883648493  # the prime-order subgroup's order
_A = 486662  # Curve25519: v^2 = u^3 + A u^2 + u over GF(2^255 - 19)
_P_MPZ = mpz(_P)
_MPZ_POSITIVE = b"\x01\x01"  # gmpy2.from_binary header: an mpz, non-negative, then LE bytes
_HASH_TAG = b"vfl/psi/v1/hash-to-curve25519"
_PERSON = b"vfl-psi-h2c-v1"  # BLAKE2b personalisation (<= 16 bytes)
_MIN_PARALLEL = 2048  # below this, worker start-up costs more than it saves

Advance = Callable[[int], None]  # progress: told how many more items are done


def default_n_jobs() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def new_scalar(rng: Random | None = None) -> bytes:
    """A fresh secret X25519 scalar (32 bytes, clamped as RFC 7748 does anyway).

    Args:
        rng: source of randomness for tests; the default is the OS CSPRNG.

    Returns:
        32 bytes; keep them secret and drop them as soon as the protocol allows.
    """
    raw = bytearray(rng.randbytes(SCALAR_BYTES) if rng is not None else secrets.token_bytes(32))
    raw[0] &= 248
    raw[31] &= 127
    raw[31] |= 64
    return bytes(raw)


def new_invertible_scalar(rng: Random | None = None) -> tuple[bytes, bytes]:
    """A fresh secret scalar and a scalar that undoes it, both valid X25519 scalars.

    X25519 clamps every scalar to ``2^254 + 8k`` (``0 <= k < 2^251``), so the inverse of a scalar
    modulo the group order is not always usable as one. For a point ``Q`` of the prime-order
    subgroup (any X25519 output of a clamped scalar is one), ``blind(blind(Q, s), t) == Q``. A
    u-coordinate stands for ``Q`` and ``-Q`` alike, so ``t`` may be any clamped value congruent
    to ``+-s^-1`` modulo the order. A scalar without one would be drawn again; none was in
    20,000 draws (tests/test_crypto_ecdh.py), so ``s`` is, as far as measured, a uniformly random
    clamped scalar like :func:`new_scalar`'s, and at worst uniform on the accepted set.

    Args:
        rng: source of randomness for tests; the default is the OS CSPRNG.

    Returns:
        ``(s, t)``, 32 bytes each; keep both secret.
    """
    while True:
        scalar = new_scalar(rng)
        inverse = pow(int.from_bytes(scalar, "little"), -1, _ORDER)
        for value in (inverse, _ORDER - inverse):
            clamped = _clamped_representative(value)
            if clamped is not None:
                return scalar, clamped.to_bytes(SCALAR_BYTES, "little")


def _clamped_representative(value: int) -> int | None:
    """A number ``v = value (mod order)`` of the form ``2^254 + 8k``, ``0 <= k < 2^251``, if any."""
    low, high = 2**254, 2**255
    m = -(-(low - value) // _ORDER)  # the first multiple putting value + m * order above low
    while value + m * _ORDER < high:
        candidate = value + m * _ORDER
        if candidate % 8 == 0:
            return candidate
        m += 1
    return None


# --------------------------------------------------------------------------- hashing


def _hash_key(domain: bytes) -> bytes:
    # Length-prefixed so that no two (tag, domain) pairs share an encoding.
    return hashlib.sha256(_HASH_TAG + len(domain).to_bytes(8, "big") + domain).digest()


def _encode(ids: Sequence[str]) -> list[bytes]:
    try:
        return [value.encode("utf-8") for value in ids]
    except UnicodeEncodeError:
        for index, value in enumerate(ids):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise CryptoError(
                    f"id number {index + 1} is not valid Unicode text (it cannot be UTF-8 encoded)"
                ) from exc
        raise  # pragma: no cover - unreachable


def _on_curve(candidates: np.ndarray) -> np.ndarray:
    """Which rows of ``(m, 32)`` u-coordinates (top bit clear) belong to points of Curve25519."""
    # u is on the curve (not its twist) iff u^3 + A u^2 + u is a non-zero square mod p; this also
    # refuses u = 0, the point of order 2. Values u >= p (probability 2^-250) are refused too.
    raw = candidates.tobytes()
    header, p, a = _MPZ_POSITIVE, _P_MPZ, _A
    us = [from_binary(header + raw[o : o + 32]) for o in range(0, len(raw), 32)]
    on_curve = np.fromiter((jacobi(u * (u * (u + a) + 1), p) == 1 for u in us), bool, len(us))
    over_p = (
        (candidates[:, 31] == 0x7F)
        & np.all(candidates[:, 1:31] == 0xFF, axis=1)
        & (candidates[:, 0] >= 0xED)
    )
    result: np.ndarray = on_curve & ~over_p
    return result


def _hash_chunk(ids: Sequence[str], key: bytes) -> bytes:
    """Hash ids to Curve25519 u-coordinates; returns ``32 * len(ids)`` bytes.

    Vectorised over the ids: round c hashes every id still without a point, each digest giving
    two candidates, so about half the ids need a second candidate and a quarter a second round.
    """
    messages = _encode(ids)
    n = len(messages)
    result = np.zeros((n, POINT_BYTES), dtype=np.uint8)
    pending = np.arange(n)
    keyed = hashlib.blake2b(digest_size=64, key=key, person=_PERSON)

    def digest(message: bytes) -> bytes:
        state = keyed.copy()  # cheaper than a keyed constructor per id
        state.update(message)
        return state.digest()

    for counter in range(256):
        if not pending.size:
            break
        suffix = bytes([counter])
        blob = b"".join([digest(messages[i] + suffix) for i in pending.tolist()])
        candidates = np.frombuffer(blob, dtype=np.uint8).reshape(len(pending), 2, POINT_BYTES)
        candidates = candidates.copy()
        candidates[:, :, 31] &= 0x7F
        first = _on_curve(candidates[:, 0])
        result[pending[first]] = candidates[first, 0]
        rest = np.flatnonzero(~first)
        second = _on_curve(candidates[rest, 1])
        result[pending[rest[second]]] = candidates[rest[second], 1]
        pending = pending[rest[~second]]
    if pending.size:  # pragma: no cover - probability 2^-512 per id
        raise CryptoError("could not hash an id to Curve25519 in 512 attempts")
    return result.tobytes()


def hash_to_points(
    ids: Sequence[str],
    domain: bytes,
    *,
    n_jobs: int | None = None,
    progress: Advance | None = None,
) -> np.ndarray:
    """Hash ids to points of Curve25519, domain-separated.

    ``H(domain, id)``: with ``K = SHA-256("vfl/psi/v1/hash-to-curve25519" || len(domain) as 8
    bytes big-endian || domain)`` and ``D_c = BLAKE2b-512(key=K, person="vfl-psi-h2c-v1",
    UTF-8(id) || byte c)`` for c = 0, 1, ..., the result is the first of ``D_0[0:32],
    D_0[32:64], D_1[0:32], ...`` which, read little-endian with the top bit cleared, is below p
    and the u-coordinate of a Curve25519 point (about two candidates per id on average).

    Args:
        ids: the ids, already normalised (see ``vfl_cli.protocol.psi.normalise_ids``).
        domain: binds the points to one job; parties hashing with different domains never match.
        n_jobs: worker count; ``None`` uses every core.
        progress: called with the number of ids just hashed, chunk by chunk.

    Returns:
        ``(len(ids), 32)`` uint8 array of u-coordinates, in the order of ``ids``.

    Raises:
        CryptoError: an id cannot be encoded as UTF-8 (a lone surrogate).
    """
    (points,) = run([Work(ids, domain=domain, progress=progress)], n_jobs=n_jobs)
    return points


# --------------------------------------------------------------------------- blinding


def _scalarmult_chunk(points: np.ndarray, scalar: bytes, out: np.ndarray) -> list[int]:
    """X25519 every row of ``points`` into ``out``; returns the rows whose result was zero."""
    failed: list[int] = []
    if _lib is None:  # pragma: no cover - fallback through the public binding
        from nacl.exceptions import RuntimeError as NaclRuntimeError

        for i in range(len(points)):
            try:
                out[i] = np.frombuffer(_nacl_scalarmult(scalar, points[i].tobytes()), np.uint8)
            except NaclRuntimeError:
                failed.append(i)
        return failed
    mult = _lib.crypto_scalarmult
    key = _ffi.from_buffer(scalar)
    src = _ffi.from_buffer(np.ascontiguousarray(points))
    dst = _ffi.from_buffer(out, require_writable=True)
    # libsodium returns -1 when the result is all zero, i.e. the input had small order (RFC 7748
    # section 6.1); such a point would make every blinded value equal and must be refused.
    for i in range(len(points)):
        off = 32 * i
        if mult(dst + off, key, src + off):
            failed.append(i)
    return failed


def blind(
    points: np.ndarray,
    scalar: bytes,
    *,
    n_jobs: int | None = None,
    progress: Advance | None = None,
) -> np.ndarray:
    """Raise every point to ``scalar`` (X25519); the order of rows is kept.

    Args:
        points: ``(n, 32)`` uint8 u-coordinates; run :func:`check_points` first on a peer's.
        scalar: 32 secret bytes from :func:`new_scalar`.
        n_jobs: worker count; ``None`` uses every core.
        progress: called with the number of points just blinded, chunk by chunk.

    Returns:
        ``(n, 32)`` uint8 array.

    Raises:
        CryptoError: the scalar is not 32 bytes, or a point has small order (the result would be
            all zero); the message lists the first offending rows.
    """
    (out,) = run([Work(_check_shape(points), scalar=scalar, progress=progress)], n_jobs=n_jobs)
    return out


@dataclass(frozen=True)
class Work:
    """One batch for :func:`run`: ids to hash (``domain`` set), and/or points or hashed ids to
    blind (``scalar`` set)."""

    data: Sequence[str] | np.ndarray  # ids when ``domain`` is set, else ``(n, 32)`` points
    domain: bytes | None = None
    scalar: bytes | None = None
    progress: Advance | None = None


def run(work: Sequence[Work], *, n_jobs: int | None = None) -> list[np.ndarray]:
    """Run every batch on one set of worker processes (:class:`Workers`); results in order.

    Raises:
        CryptoError: a scalar is not 32 bytes or an id is not valid Unicode.
        SmallOrderPoints: a point has small order (the result would be all zero); the message
            lists the first offending rows.
    """
    with Workers(n_jobs) as workers:
        pending = [workers.submit(w) for w in work]
        return [result() for result in pending]


class Workers:
    """Worker processes shared by the batches of one step, started at the first large batch.

    :meth:`submit` queues a batch and returns at once, so the caller can do its own work (read a
    file, check a message) while the workers compute, and queue more batches behind the first
    without a core waiting in between. Batches below 2,048 items run in this process at submit.

    Example::

        with Workers() as workers:
            theirs = workers.submit(Work(peer_points, scalar=beta))
            ids = read_ids()                      # while the peer's points are blinded
            mine = workers.submit(Work(ids, domain=domain, scalar=beta))
            double, own = theirs(), mine()
    """

    def __init__(self, n_jobs: int | None = None) -> None:
        if n_jobs is not None and n_jobs < 1:
            raise ValueError(f"n_jobs must be at least 1, got {n_jobs}")
        self.jobs = default_n_jobs() if n_jobs is None else n_jobs
        self._executor: ProcessPoolExecutor | None = None
        self._batches = 0

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:  # on an error, drop the chunks not yet begun
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, work: Work) -> Callable[[], np.ndarray]:
        """Queue one batch; the returned function waits for its ``(n, 32)`` result.

        Raises:
            CryptoError: the scalar is not 32 bytes (at once); an id is not valid Unicode (when
                the result is asked for).
            SmallOrderPoints: (when the result is asked for) see :func:`run`.
        """
        if work.scalar is not None and (
            not isinstance(work.scalar, bytes) or len(work.scalar) != SCALAR_BYTES
        ):
            raise CryptoError(f"an X25519 scalar is {SCALAR_BYTES} bytes, got {_describe(work.scalar)}")
        batch, self._batches = self._batches, self._batches + 1
        key = _hash_key(work.domain) if work.domain is not None else None
        n = len(work.data)
        client = _dask_client() if n >= _MIN_PARALLEL else None
        pieces: list[tuple[int, int, Callable[[], tuple[bytes, list[int]]]]]
        if client is not None:
            # The party's Dask cluster (vfl --dask-scheduler): the same chunks, on its workers.
            cores = max(1, sum(client.nthreads().values()))
            pieces = [
                (a, b, client.submit(_work_task, (work.data[a:b], key, work.scalar), pure=False).result)
                for a, b in pairwise(_guided_edges(n, cores))
                if b > a
            ]
        elif self.jobs == 1 or n < _MIN_PARALLEL:
            done = _work_chunk(work.data, key, work.scalar)
            pieces = [(0, n, lambda: done)]
        else:
            edges = _guided_edges(n, self.jobs)
            pool = self._pool()
            pieces = [
                (a, b, pool.submit(_work_task, (work.data[a:b], key, work.scalar)).result)
                for a, b in pairwise(edges)
                if b > a
            ]

        def result() -> np.ndarray:
            out = np.empty((n, POINT_BYTES), dtype=np.uint8)
            failed: list[int] = []
            for a, b, get in pieces:
                data, bad = get()
                out[a:b] = np.frombuffer(data, np.uint8).reshape(b - a, POINT_BYTES)
                failed.extend(a + i for i in bad)
                if work.progress is not None:
                    work.progress(b - a)
            if failed:
                raise SmallOrderPoints(
                    f"{len(failed)} point(s) have small order and cannot be blinded (rows "
                    f"{_first(failed)}); the peer's points are invalid or were tampered with",
                    batch=batch,
                )
            return out

        return result

    def _pool(self) -> ProcessPoolExecutor:
        # Hashing is Python code holding the GIL: only processes run it in parallel. Each chunk
        # travels to its worker pickled, so the pool serves every batch, whatever the start method.
        if self._executor is None:
            context = get_context(_start_method())
            cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            pin: dict[str, Any] = {}
            if 1 < self.jobs <= len(cpus):
                # One core per worker: the scheduler then never moves a worker (and its cache)
                # between cores, worth a few per cent on a shared virtual machine.
                pin = {"initializer": _pin_worker, "initargs": (context.Value("i", 0), cpus)}
            self._executor = ProcessPoolExecutor(max_workers=self.jobs, mp_context=context, **pin)
        return self._executor


def _dask_client() -> Any | None:
    """The Dask client of ``vfl_cli.crypto.parallel.use_dask`` if one is in use, else ``None``.

    Dask is never imported here: without ``use_dask`` it was not imported by anyone.
    """
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client
        return None


def _guided_edges(n: int, jobs: int, smallest: int = 512) -> list[int]:
    """Chunk boundaries for ``n`` items: each chunk an eighth of what is left per worker, down to
    ``smallest``. Large chunks first keep per-chunk costs negligible; small ones last mean no core
    waits long for the other to finish its final chunk (and progress bars keep moving)."""
    edges = [0]
    while edges[-1] < n:
        size = max(smallest, (n - edges[-1]) // (jobs * 8))
        edges.append(min(n, edges[-1] + size))
    return edges


def _pin_worker(counter: Any, cpus: list[int]) -> None:
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    with contextlib.suppress(OSError):  # a sandbox may forbid it; the work is the same
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


class SmallOrderPoints(CryptoError):
    """Points that X25519 maps to zero; ``batch`` is the index of their :class:`Work`."""

    def __init__(self, message: str, *, batch: int) -> None:
        super().__init__(message)
        self.batch = batch


# --------------------------------------------------------------------------- checks


def find_duplicates(points: np.ndarray) -> np.ndarray:
    """Rows of ``points`` equal to an earlier row (sorted, may be empty)."""
    points = _check_shape(points)
    if len(points) < 2:
        return np.empty(0, dtype=np.int64)
    prefix = np.ascontiguousarray(points[:, :8]).view("<u8").ravel()
    order = np.argsort(prefix, kind="stable")
    ranked = prefix[order]
    if not np.any(ranked[1:] == ranked[:-1]):
        return np.empty(0, dtype=np.int64)
    # Rare for random points: fall back to comparing whole rows.
    rows = np.ascontiguousarray(points).view(f"V{POINT_BYTES}").ravel()
    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    repeated = order[1:][ranked[1:] == ranked[:-1]]
    return np.sort(repeated).astype(np.int64)


def check_points(
    points: object, *, expected: int | None = None, what: str = "points"
) -> np.ndarray:
    """Check points received from a peer before blinding or comparing them.

    Refused: anything but an ``(n, 32)`` uint8 array, a wrong count, a non-canonical encoding (top
    bit set, or u >= 2^255 - 19, which no honest X25519 output has), repeated points. Points of
    small order are refused later by :func:`blind` (libsodium reports an all-zero result).

    Args:
        points: the received array.
        expected: the number of points the protocol says must arrive, if known.
        what: how to name the points in error messages.

    Returns:
        The same points as a contiguous ``(n, 32)`` uint8 array.

    Raises:
        CryptoError: one of the rules above is broken; the message names the first rows.
    """
    array = _check_shape(points, what=what)
    if expected is not None and len(array) != expected:
        raise CryptoError(f"{what}: expected {expected} points, got {len(array)}")
    high = np.flatnonzero(array[:, 31] & 0x80)
    if high.size:
        raise CryptoError(
            f"{what}: {high.size} point(s) are not canonical X25519 encodings (top bit set; rows "
            f"{_first(high)})"
        )
    top = (array[:, 31] == 0x7F) & np.all(array[:, 1:31] == 0xFF, axis=1) & (array[:, 0] >= 0xED)
    over = np.flatnonzero(top)
    if over.size:
        raise CryptoError(
            f"{what}: {over.size} point(s) are not canonical X25519 encodings (u >= 2^255 - 19; "
            f"rows {_first(over)})"
        )
    repeated = find_duplicates(array)
    if repeated.size:
        raise CryptoError(
            f"{what}: {repeated.size} point(s) repeat an earlier one (rows {_first(repeated)}); "
            "an honest party never sends the same point twice"
        )
    return array


# --------------------------------------------------------------------------- plumbing

def _work_chunk(data: Sequence[str] | np.ndarray, key: bytes | None, scalar: bytes | None) -> tuple[bytes, list[int]]:
    """Hash and/or blind one chunk: ``32 * len(data)`` bytes, and the rows that failed blinding."""
    if key is not None:
        points = _as_points(_hash_chunk(data, key), len(data))  # type: ignore[arg-type]
    else:
        points = np.ascontiguousarray(data)
    if scalar is None:
        return points.tobytes(), []
    out = np.empty((len(points), POINT_BYTES), dtype=np.uint8)
    failed = _scalarmult_chunk(points, scalar, out)
    return out.tobytes(), failed


def _work_task(job: tuple[Sequence[str] | np.ndarray, bytes | None, bytes | None]) -> tuple[bytes, list[int]]:
    return _work_chunk(*job)


def _start_method() -> str:
    """How to start workers: fork when it is safe, else a clean server process."""
    methods = get_all_start_methods()
    # fork copies only the calling thread: a lock held by another thread at that moment (say a
    # progress bar writing to stderr) would stay locked forever in the child. Fork only while
    # this is the process's single thread.
    if sys.platform.startswith("linux") and "fork" in methods and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _check_shape(points: object, *, what: str = "points") -> np.ndarray:
    if not isinstance(points, np.ndarray) or points.dtype != np.uint8:
        raise CryptoError(
            f"{what}: expected a uint8 array of 32-byte points, got {_describe(points)}"
        )
    if points.ndim != 2 or points.shape[1] != POINT_BYTES:
        raise CryptoError(f"{what}: expected shape (n, {POINT_BYTES}), got {points.shape}")
    return np.ascontiguousarray(points)


def _as_points(data: bytes, n: int) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(n, POINT_BYTES).copy()


def _first(rows: Sequence[int] | np.ndarray, k: int = 5) -> str:
    listed = ", ".join(str(int(r)) for r in list(rows)[:k])
    return listed + (", ..." if len(rows) > k else "")


def _describe(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    if isinstance(value, np.ndarray):
        return f"array of {value.dtype} with shape {value.shape}"
    return type(value).__name__
