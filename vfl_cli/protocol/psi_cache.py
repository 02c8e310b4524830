"""Unbalanced alignment with a cached blinded set: pure steps (see docs/protocols/psi.md).

A party with a large id set (the *cache owner*, a passive party: say a bureau's 10M customers)
publishes its ids blinded with a long-lived secret scalar beta, once, to one peer (the *cache
user*, the active party: say a bank that scores a few thousand new applicants a day)::

    owner --cache-->  user     {[beta]H(y)} truncated to w bytes, sorted; limits, expiry

Each later alignment of a small set X of the user (a *query*) costs work and files in |X| only::

    user  --start-->   owner   {[alpha]H(x)} shuffled, fresh alpha; seed commitment; exchange key
    owner --response-> user    {[beta][alpha]H(x)} in the user's order; seed; exchange key
    user  --finish-->  owner   positions, in the sorted cache, of the common ids; seeds, sealed

The user undoes alpha (:func:`vfl_cli.crypto.ecdh.new_invertible_scalar`), so it holds
``[beta]H(x)`` and looks it up in the cache. Both parties then order the common ids by the joint
order key exactly as in :mod:`vfl_cli.protocol.psi`.

Threat model: semi-honest, as the balanced protocol, plus limits because beta is reused. The user
can test an id against the owner's set only with the owner's help (computing ``[beta]H(x)`` without
beta is the computational Diffie-Hellman problem), and the owner gives that help for at most
``max_queries`` queries of at most ``max_query_ids`` ids each, until ``expires``, to the one peer
the cache was made for: a cache is a bounded membership oracle, and these bounds are its size. The
owner sees fresh, random-looking points each query (a fresh alpha): queries cannot be linked.

Bounded memory: :func:`publish_streamed` publishes the same cache (same values, same order, for
the same beta) with the ids read in chunks and the blinded points sorted through bucket files
(:func:`vfl_cli.protocol.psi_stream.blind_own`); the owner's secret lists (``order``, its ids)
stay in files that the query steps map (:func:`open_secret`), reading only the rows they need.

Truncation: a cached value is the first ``w`` bytes of ``[beta]H(y)``; a false match needs two
different points to agree on them. ``w`` (:func:`truncation_bytes`) keeps the chance of any false
match, over every query the limits allow and within the cache, below ``2^-40``.
"""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from random import Random
from typing import Any

import numpy as np

from vfl_cli.crypto import channel, ecdh
from vfl_cli.errors import CryptoError, DataError, InvalidArtifact
from vfl_cli.protocol import psi
from vfl_cli.protocol import psi_stream as ps

__all__ = [
    "CacheLimits",
    "CacheMessage",
    "CacheSecret",
    "CachedSet",
    "OwnerQueryState",
    "QueryResponse",
    "QueryState",
    "check_cache",
    "conclude_query",
    "finish_query",
    "mapped_values",
    "open_secret",
    "pack_values",
    "publish_cache",
    "publish_streamed",
    "respond_query",
    "start_query",
    "truncation_bytes",
    "unpack_values",
]

_SECURITY_BITS = 40  # chance of any false match at most 2^-40


@dataclass(frozen=True)
class CacheLimits:
    """How long and how much a cache may be used (public, in the signed cache artifact)."""

    max_queries: int
    max_query_ids: int
    expires: datetime  # timezone-aware, UTC


@dataclass(frozen=True)
class CacheMessage:
    """Owner to user, once: the sorted, truncated blinded set."""

    cache_id: str
    values: np.ndarray  # (n, width) uint8, rows strictly ascending as byte strings
    limits: CacheLimits


@dataclass(frozen=True)
class CacheSecret:
    """What the owner keeps while the cache is in use. Secret: holds beta."""

    cache_id: str
    owner: str
    user: str
    scalar: bytes  # beta
    order: np.ndarray  # int64: order[j] is the owner's row whose value is the cache's row j
    id_bytes: np.ndarray  # uint8: the owner's ids, UTF-8, concatenated in file order
    id_offsets: np.ndarray  # int64 (n + 1,): id i is id_bytes[offsets[i]:offsets[i + 1]]
    limits: CacheLimits


@dataclass(frozen=True)
class CachedSet:
    """The user's checked copy of a cache."""

    cache_id: str
    values: np.ndarray
    limits: CacheLimits


@dataclass(frozen=True)
class QueryState:
    """What the user keeps between :func:`start_query` and :func:`finish_query`. Secret."""

    job_id: str
    party: str
    inverse: bytes  # undoes alpha (alpha itself is not needed again)
    seed: bytes
    exchange_secret: bytes
    order: np.ndarray
    start_digest: bytes
    ids_digest: bytes


@dataclass(frozen=True)
class QueryResponse:
    """Owner to user: the user's points blinded with beta, in the user's order."""

    job_id: str
    start_digest: bytes
    double_blinded: np.ndarray
    seed: bytes
    exchange_public: bytes


@dataclass(frozen=True)
class OwnerQueryState:
    """What the owner keeps between :func:`respond_query` and :func:`conclude_query`."""

    job_id: str
    party: str
    active: str
    seed: bytes
    seed_commitment: bytes
    response_digest: bytes
    channel_key: bytes


def truncation_bytes(n: int, max_queries: int, max_query_ids: int) -> int:
    """Bytes kept per cached value: at least ``log2(n) + log2(max(n, queries * ids)) + 40`` bits.

    A query id that is not in the set falsely matches one of ``n`` cached values with
    probability ``n / 2^(8w)``; over every id the limits allow that is ``n * Q * m / 2^(8w)``;
    two cached values agree on ``w`` bytes with probability below ``n^2 / 2^(8w)``.
    """
    bits = math.log2(max(n, 2)) + math.log2(max(n, max_queries * max_query_ids, 2)) + _SECURITY_BITS
    return min(ecdh.POINT_BYTES, max(8, math.ceil(bits / 8)))


def _as_strings(values: np.ndarray) -> np.ndarray:
    """Rows of bytes as one fixed-width byte string each (compared as bytes, all one width)."""
    array = np.ascontiguousarray(values, dtype=np.uint8)
    return array.view(f"S{array.shape[1]}").ravel()


def pack_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted cache values without their first c bytes, and how many values share each prefix.

    Sorted values of a pseudorandom set share their leading bytes with their neighbours: the
    first ``c`` bytes are sent once per prefix as a count (``2^(8c)`` counts, chosen with
    ``2^(8c) <= n / 8`` so that they cost at most 1/8 byte per value), the rest as they are. This
    saves ``c`` bytes per value (2 for a million ids, 3 from 134 million), losslessly.

    Returns:
        ``(rest, counts)``: ``(n, width - c)`` uint8 and ``(2^(8c),)`` unsigned counts.
    """
    n, width = values.shape
    c = max((k for k in range(4) if 256**k <= max(n // 8, 1) and k < width), default=0)
    prefix = np.zeros(n, dtype=np.int64)
    for k in range(c):
        prefix = prefix * 256 + values[:, k]
    counts = np.bincount(prefix, minlength=256**c)
    dtype = next(d for d in (np.uint8, np.uint16, np.uint32, np.uint64) if counts.max() <= np.iinfo(d).max)
    return np.ascontiguousarray(values[:, c:]), counts.astype(dtype)


def unpack_values(rest: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The values :func:`pack_values` packed (sortedness is checked by :func:`check_cache`).

    Raises:
        InvalidArtifact: counts that are not ``256^c`` unsigned numbers adding up to the rows.
    """
    where = "the cache"
    if not isinstance(counts, np.ndarray) or counts.ndim != 1 or counts.dtype.kind != "u":
        raise InvalidArtifact(f"{where}: prefix counts must be a list of unsigned integers")
    if not isinstance(rest, np.ndarray) or rest.dtype != np.uint8 or rest.ndim != 2:
        raise InvalidArtifact(f"{where}: values must be a 2-d uint8 array")
    c = next((k for k in range(4) if len(counts) == 256**k), None)
    if c is None or int(counts.sum(dtype=np.uint64)) != len(rest):
        raise InvalidArtifact(
            f"{where}: {len(counts)} prefix counts for {len(rest)} values; expected 256^c counts "
            "adding up to the number of values"
        )
    prefix = np.repeat(np.arange(len(counts), dtype=">u4"), counts.astype(np.int64))
    head = prefix.view(np.uint8).reshape(-1, 4)[:, 4 - c:]
    return np.ascontiguousarray(np.concatenate([head, rest], axis=1))


def publish_cache(
    ids: Sequence[str],
    *,
    cache_id: str,
    salt: bytes,
    owner: str,
    user: str,
    limits: CacheLimits,
    rng: Random | None = None,
    n_jobs: int | None = None,
    progress: psi.Progress | None = None,
) -> tuple[CacheSecret, CacheMessage]:
    """Owner: hash and blind every id with a fresh long-lived beta; sort and truncate.

    Sorting replaces the shuffle: the order of the sorted values depends on beta only, never on
    the file. Returns the owner's secret and the message for ``user``.
    """
    beta = ecdh.new_scalar(rng)
    width = truncation_bytes(len(ids), limits.max_queries, limits.max_query_ids)
    domain = psi.make_domain(cache_id, salt)
    with ecdh.Workers(n_jobs) as workers:
        bar = psi.progress_bar(progress, "hashing and blinding ids", len(ids))
        pending = workers.submit(ecdh.Work(ids, domain=domain, scalar=beta, progress=bar))
        encoded = [value.encode("utf-8") for value in ids]  # while the workers compute
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        id_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        truncated = np.ascontiguousarray(pending()[:, :width])
    order = np.argsort(_as_strings(truncated), kind="stable").astype(np.int64)
    values = truncated[order]
    ranked = _as_strings(values)
    if len(ranked) > 1 and not bool(np.all(ranked[1:] > ranked[:-1])):  # pragma: no cover
        raise CryptoError("two cached values collide (probability below 2^-40); publish again")
    secret = CacheSecret(cache_id, owner, user, beta, order, id_bytes, offsets, limits)
    return secret, CacheMessage(cache_id=cache_id, values=values, limits=limits)


def _keeping_ids(chunks: ps.Chunks, files: ps.Scratch) -> ps.Chunks:
    """``chunks``, writing each chunk's ids (UTF-8, concatenated) and their end offsets to
    ``ids.bytes`` and ``ids.offsets`` as they are read (the layout of :class:`CacheSecret`)."""
    def read() -> Iterator[tuple[int, list[str]]]:
        files.write("ids.bytes", np.empty(0, np.uint8))
        files.write("ids.offsets", np.zeros(1, np.int64))
        end = 0
        for first, ids in chunks():
            encoded = [value.encode("utf-8") for value in ids]
            ends = end + np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)))
            files.write("ids.bytes", np.frombuffer(b"".join(encoded), np.uint8), append=True)
            files.write("ids.offsets", ends, append=True)
            end = int(ends[-1]) if len(ends) else end
            yield first, ids

    return read


@dataclass(frozen=True)
class Published:
    """What :func:`publish_streamed` leaves beside its files: beta (secret), the number of ids
    and the bytes kept per value."""

    scalar: bytes
    n: int
    width: int


def publish_streamed(
    chunks: ps.Chunks,
    files: ps.Scratch,
    budget: ps.Budget,
    *,
    n_upper: int,
    cache_id: str,
    salt: bytes,
    limits: CacheLimits,
    rng: Random | None = None,
    n_jobs: int | None = None,
    progress: psi.Progress | None = None,
) -> Published:
    """Owner: :func:`publish_cache` in bounded memory, into the private folder ``files``.

    The ids are hashed and blinded a chunk at a time and the points sorted through bucket files
    (:func:`vfl_cli.protocol.psi_stream.blind_own`, which refuses repeated ids); the sorted
    points are then truncated a part at a time. Sorting the whole points orders their distinct
    truncations as sorting the truncations does, so the files hold exactly what
    :func:`publish_cache` returns for the same beta: ``values`` (the message's values),
    ``order``, ``ids.bytes`` and ``ids.offsets`` (the secret's arrays).

    Args:
        n_upper: an upper bound on the number of ids (sizes the buckets).

    Raises:
        DataError: an id appears twice.
        CryptoError: two truncated values collide (probability below 2^-40).
    """
    beta = ecdh.new_scalar(rng)
    domain = psi.make_domain(cache_id, salt)
    with ecdh.Workers(n_jobs) as workers:
        n = ps.blind_own(_keeping_ids(chunks, files), domain, beta, files, budget, n_upper=n_upper,
                         workers=workers, progress=progress)
    width = truncation_bytes(n, limits.max_queries, limits.max_query_ids)
    files.write("values", np.empty(0, np.uint8))
    last: Any = None
    for part in range(1, ps.parts_of(n, budget.part) + 1):
        ranked = _as_strings(np.ascontiguousarray(ps.sent_part(files, n, budget.part, part)[:, :width]))
        after = last is None or not len(ranked) or bool(ranked[0] > last)
        if not after or (len(ranked) > 1 and not bool(np.all(ranked[1:] > ranked[:-1]))):  # pragma: no cover
            raise CryptoError("two cached values collide (probability below 2^-40); publish again")
        last = ranked[-1] if len(ranked) else last
        files.write("values", ranked, append=True)
    os.replace(files.path("sent.rows"), files.path("order"))
    files.path("sent.pts").unlink()
    return Published(scalar=beta, n=n, width=width)


def _mapped(files: ps.Scratch, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only map of a file of ``files`` (nothing read until used), checked for its size."""
    path = files.path(name)
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if not path.exists() or path.stat().st_size != size:
        raise DataError(f"the cache's file {path} is missing or changed; publish the cache again")
    if size == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def mapped_values(files: ps.Scratch, n: int, width: int) -> np.ndarray:
    """The cache's ``(n, width)`` values kept in ``files`` (``values``), mapped, not read."""
    return _mapped(files, "values", np.uint8, (n, width))


def open_secret(files: ps.Scratch, *, n: int, cache_id: str, owner: str, user: str, scalar: bytes,
                limits: CacheLimits) -> CacheSecret:
    """The owner's :class:`CacheSecret` over the files :func:`publish_streamed` wrote, mapped:
    a query reads only the rows of its matches."""
    offsets = _mapped(files, "ids.offsets", np.int64, (n + 1,))
    total = int(offsets[-1])
    return CacheSecret(cache_id=cache_id, owner=owner, user=user, scalar=scalar,
                       order=_mapped(files, "order", np.int64, (n,)),
                       id_bytes=_mapped(files, "ids.bytes", np.uint8, (total,)), id_offsets=offsets,
                       limits=limits)


def check_cache(message: CacheMessage, *, cache_id: str) -> CachedSet:
    """User: check a received cache (shape, width against the bound, strictly sorted).

    Raises:
        InvalidArtifact: another cache, a malformed array, too few bytes per value for the
            limits, unsorted or repeated values.
    """
    where = "the cache"
    psi.check_same_job(message.cache_id, cache_id, where)
    values = message.values
    if not isinstance(values, np.ndarray) or values.dtype != np.uint8 or values.ndim != 2:
        raise InvalidArtifact(f"{where}: values must be a 2-d uint8 array")
    n, width = values.shape
    if n == 0:
        raise InvalidArtifact(f"{where} holds no values (the owner has no ids)")
    limits = message.limits
    need = truncation_bytes(n, limits.max_queries, limits.max_query_ids)
    if not need <= width <= ecdh.POINT_BYTES:
        raise InvalidArtifact(
            f"{where}: {width} bytes per value, but {n:,} values used by up to "
            f"{limits.max_queries} queries of {limits.max_query_ids:,} ids need {need}"
        )
    ranked = _as_strings(values)
    if n > 1 and not bool(np.all(ranked[1:] > ranked[:-1])):
        raise InvalidArtifact(f"{where}: values must be strictly ascending (sorted, no repeats)")
    return CachedSet(cache_id=cache_id, values=np.ascontiguousarray(values), limits=limits)


def _check_use(limits: CacheLimits, *, query: int, count: int, now: datetime, where: str) -> None:
    """Refuse a query past the cache's limits (both parties run this)."""
    if now >= limits.expires:
        raise DataError(
            f"{where}: the cache expired at {limits.expires.isoformat(timespec='seconds')}; "
            "the owner must publish a new one (vfl align cache)"
        )
    if not 1 <= query <= limits.max_queries:
        raise DataError(
            f"{where}: query {query} is past the cache's limit of {limits.max_queries} queries; "
            "the owner must publish a new one (vfl align cache)"
        )
    if count > limits.max_query_ids:
        raise DataError(
            f"{where}: {count:,} ids exceed the cache's limit of {limits.max_query_ids:,} per query"
        )


def start_query(
    ids: Sequence[str],
    cache: CachedSet,
    *,
    job_id: str,
    query: int,
    salt: bytes,
    party: str,
    now: datetime,
    rng: Random | None = None,
    n_jobs: int | None = None,
    progress: psi.Progress | None = None,
) -> tuple[QueryState, psi.StartMessage]:
    """User, hand-off 1: blind the small set with a fresh alpha (in the cache's domain), shuffled.

    Args:
        ids: the user's normalised ids for this query.
        cache: the checked cache (:func:`check_cache`).
        job_id: this query's job id.
        query: this query's number (1 for the first query of the cache).
        salt: the cache's salt (its domain: cached and queried points must match).
        party: the user's name.
        now: the current time (UTC), checked against the cache's expiry.

    Raises:
        DataError: the query is past the cache's limits.
    """
    _check_use(cache.limits, query=query, count=len(ids), now=now, where="this cache")
    alpha, inverse = ecdh.new_invertible_scalar(rng)
    seed = psi.new_seed(rng)
    exchange_secret, exchange_public = channel.new_exchange(rng)
    blinded = psi.blind_ids(
        ids, psi.make_domain(cache.cache_id, salt), alpha, rng=rng, n_jobs=n_jobs, progress=progress
    )
    state = QueryState(
        job_id=job_id, party=party, inverse=inverse, seed=seed, exchange_secret=exchange_secret,
        order=blinded.order, start_digest=psi.points_digest(blinded.points, job_id),
        ids_digest=psi.ids_digest(ids),
    )
    message = psi.StartMessage(
        job_id=job_id, points=blinded.points, seed_commitment=psi.commit_seed(seed, job_id),
        exchange_public=exchange_public,
    )
    return state, message


def respond_query(
    message: psi.StartMessage,
    secret: CacheSecret,
    *,
    job_id: str,
    query: int,
    active: str,
    now: datetime,
    rng: Random | None = None,
    n_jobs: int | None = None,
    progress: psi.Progress | None = None,
) -> tuple[OwnerQueryState, QueryResponse]:
    """Owner, hand-off 2: blind the user's points with beta, once the query is within limits.

    Raises:
        DataError: the query comes from another peer than the cache's, or is past its limits.
        InvalidArtifact: the start message is for another job or its points are invalid.
    """
    if active != secret.user:
        raise DataError(
            f"cache {secret.cache_id} was published for {secret.user}, not for {active}; "
            "a cache is never used with another peer"
        )
    _check_use(secret.limits, query=query, count=len(message.points), now=now,
               where=f"cache {secret.cache_id}")
    psi.check_same_job(message.job_id, job_id, "the start message")
    if not isinstance(message.seed_commitment, bytes) or len(message.seed_commitment) != 32:
        raise InvalidArtifact("the start message: the seed commitment is not 32 bytes")
    what = f"the points of {active} (start message)"
    checked = psi.check_peer_points(message.points, what=what)
    if not len(checked):
        raise InvalidArtifact("the start message holds no points (the active party has no ids)")
    exchange_secret, exchange_public = channel.new_exchange(rng)
    key = channel.channel_key(
        exchange_secret, message.exchange_public,
        psi.channel_context(job_id, active, secret.owner), what="the start message",
    )
    with ecdh.Workers(n_jobs) as workers:
        double = psi.submit_peer(workers, checked, secret.scalar, what, progress)()
    seed = psi.new_seed(rng)
    state = OwnerQueryState(
        job_id=job_id, party=secret.owner, active=active, seed=seed,
        seed_commitment=message.seed_commitment,
        response_digest=psi.points_digest(double, job_id), channel_key=key,
    )
    response = QueryResponse(
        job_id=job_id, start_digest=psi.points_digest(message.points, job_id),
        double_blinded=double, seed=seed, exchange_public=exchange_public,
    )
    return state, response


def finish_query(
    state: QueryState,
    ids: Sequence[str],
    cache: CachedSet,
    response: QueryResponse,
    *,
    owner: str,
    n_jobs: int | None = None,
) -> tuple[psi.Alignment, psi.FinishMessage]:
    """User, hand-off 3: undo alpha, look the points up in the cache, tell the owner where.

    Raises:
        DataError: ``ids`` is not the list the query started with.
        InvalidArtifact: the response is for another job or start, or holds invalid points.
    """
    where = f"the response from {owner}"
    psi.check_same_ids(ids, state.ids_digest)
    psi.check_same_job(response.job_id, state.job_id, where)
    if not hmac.compare_digest(response.start_digest, state.start_digest):
        raise InvalidArtifact(f"{where} answers another start message (stale or replayed)")
    if not isinstance(response.seed, bytes) or len(response.seed) != psi.SEED_BYTES:
        raise InvalidArtifact(f"{where}: the seed is not {psi.SEED_BYTES} bytes")
    key = channel.channel_key(
        state.exchange_secret, response.exchange_public,
        psi.channel_context(state.job_id, state.party, owner), what=where,
    )
    what = f"{where}: the re-blinded start points"
    double = psi.check_peer_points(response.double_blinded, expected=len(state.order), what=what)
    with ecdh.Workers(n_jobs) as workers:
        # Points that are not X25519 outputs of the owner's scalar: refused like any small-order
        # point, never looked up.
        unblinded = psi.submit_peer(workers, double, state.inverse, what, None)()
    width = cache.values.shape[1]
    wanted = _as_strings(np.ascontiguousarray(unblinded[:, :width]))
    cached = _as_strings(cache.values)
    at = np.searchsorted(cached, wanted)
    at[at == len(cached)] = 0
    found = np.flatnonzero(cached[at] == wanted)  # positions in the user's sent list
    seeds = {state.party: state.seed, owner: response.seed}
    order_key = psi.order_key(seeds, state.job_id)
    message = psi.FinishMessage(
        job_id=state.job_id, response_digest=psi.points_digest(double, state.job_id),
        # Ascending positions in the sorted cache: their order carries nothing about the user's.
        positions=np.sort(at[found]).astype(np.int64),
        sealed_seeds=psi.seal_seeds(key, seeds),
    )
    rows = state.order[found]
    chosen = psi.take_rows(ids, rows)
    return psi.ordered_alignment(chosen, rows, order_key, state.job_id), message


def conclude_query(
    state: OwnerQueryState, secret: CacheSecret, message: psi.FinishMessage
) -> psi.Alignment:
    """Owner, after hand-off 3: cache positions to its own rows and ids, in the joint order.

    Raises:
        InvalidArtifact: another job or response, positions out of range, unsorted or repeated,
            or seeds that do not open or do not match.
    """
    where = "the finish message"
    psi.check_same_job(message.job_id, state.job_id, where)
    if not hmac.compare_digest(message.response_digest, state.response_digest):
        raise InvalidArtifact(f"{where} answers another response (stale or replayed)")
    seeds = psi.open_seeds(state.channel_key, message.sealed_seeds, what=where)
    if set(seeds) != {state.active, state.party}:
        raise InvalidArtifact(f"{where} must carry the seeds of {state.active} and {state.party}")
    psi.verify_seed(seeds[state.active], state.seed_commitment, state.job_id)
    if not hmac.compare_digest(seeds[state.party], state.seed):
        raise InvalidArtifact(f"{where} carries another seed for {state.party} than it sent")
    positions = psi.checked_positions(message.positions, len(secret.order), where)
    rows = np.asarray(secret.order[positions], dtype=np.int64)  # the order may be a file's map
    offsets, blob = secret.id_offsets, secret.id_bytes
    chosen = [blob[offsets[r]:offsets[r + 1]].tobytes().decode("utf-8") for r in rows.tolist()]
    return psi.ordered_alignment(chosen, rows, psi.order_key(seeds, state.job_id), state.job_id)
