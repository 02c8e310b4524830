"""The ``psi`` and ``psi-cache`` jobs: private set intersection alignment on the protocol kit.

The cryptographic steps live in :mod:`vfl_cli.protocol.psi` and :mod:`vfl_cli.protocol.psi_cache`
(see their docstrings and docs/protocols/psi.md for the threat model and what each message
reveals); this module decodes the artifacts into typed messages, calls those pure steps and
encodes what they return, with one typed state per role (decode -> pure step -> encode):

=====================  ===========================  =========================================
hand-off               artifact kind (message)      payload
=====================  ===========================  =========================================
1  active -> passive   ``psi/start`` (:class:`Start`)  A's blinded, shuffled points; seed commitment;
                                                    A's ephemeral key-exchange public key
2  passive -> active   ``psi/response``             A's points re-blinded; Pi's blinded points; seed;
                       (:class:`Response`)          Pi's ephemeral key-exchange public key
3  active -> passive   ``psi/finish`` (:class:`Finish`)  positions of the common ids in Pi's list;
                                                    every seed, sealed to Pi
=====================  ===========================  =========================================

Phases (:class:`Align`): the active party ``start`` (no input) -> ``wait-responses`` -> done; a
passive party ``start`` (waits for the start) -> ``wait-finish`` -> done. A ``psi`` job with a
``cache`` parameter runs :class:`CachedQuery` (the unbalanced steps, same phases and kinds, the
response without the owner's points); a job the active party streams (sets past its memory
bound) runs :mod:`vfl_cli.protocol.align_stream`. :class:`AlignCache` (``psi-cache``) publishes
the passive party's blinded set once (``psi/cache``, :class:`Cache`), in bounded memory
(:func:`vfl_cli.protocol.psi_cache.publish_streamed`); both parties keep the cache's lists as
files of the cache job's private ``cache/`` folder (0700, files 0600), which each query maps.

Afterwards every party holds, in its own job state, the common ids in the jointly shuffled
order (``aligned_ids``) and the row of its own file for each (``aligned_rows``). The party's
secret scalar is kept in its private job state between hand-offs and never sent. The results
carry the size and the keyed fingerprint only (:func:`vfl_cli.protocol.psi.alignment_fingerprint`):
no plain hash of ids, which anyone holding it could test a guessed intersection against.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from vfl_cli.artifacts.container import Artifact
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.names import is_name
from vfl_cli.protocol import align_stream, psi, psi_cache
from vfl_cli.protocol import psi_stream as ps
from vfl_cli.protocol.base import Expect, Hex, Int, JobState, Outgoing, PartyContext, need, typed_params
from vfl_cli.protocol.kit import KitProtocol, Message, PartyState, Phase, Step, from_active, nothing

__all__ = [
    "CACHE",
    "FINISH",
    "RESPONSE",
    "START",
    "Align",
    "AlignCache",
    "Cache",
    "CachedQuery",
    "CachedResponse",
    "Finish",
    "Response",
    "Start",
    "query_number",
]

START = "psi/start"
RESPONSE = "psi/response"
FINISH = "psi/finish"
CACHE = "psi/cache"

T = TypeVar("T", bound="_AlignState")


# ----- messages ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _PsiMessage(Message):
    """A message of the alignment; :meth:`step` gives it as the pure step's message type."""

    def step(self, job: str) -> Any:
        """The pure step's message (``job``: the job named in the artifact's signed header)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Start(_PsiMessage):
    """Hand-off 1, A to every passive party: A's blinded, shuffled points."""

    kind = START
    point_fields = ("points",)
    count: int  # A's number of ids (what the message reveals)
    seed_commitment: bytes
    exchange_public: bytes
    points: np.ndarray

    def step(self, job: str) -> psi.StartMessage:
        """The message :func:`vfl_cli.protocol.psi.respond` takes (``job``: the artifact's job)."""
        return psi.StartMessage(job, self.points, self.seed_commitment, self.exchange_public)


@dataclass(frozen=True)
class Response(_PsiMessage):
    """Hand-off 2, passive party Pi to A: A's points re-blinded, Pi's own blinded points."""

    kind = RESPONSE
    point_fields = ("double_blinded", "points")
    count: int  # Pi's number of ids
    start_digest: bytes
    seed: bytes
    exchange_public: bytes
    double_blinded: np.ndarray
    points: np.ndarray

    def step(self, job: str) -> psi.ResponseMessage:
        return psi.ResponseMessage(
            job, self.start_digest, self.double_blinded, self.points, self.seed, self.exchange_public
        )


@dataclass(frozen=True)
class CachedResponse(_PsiMessage):
    """Hand-off 2 of a query to a cache: the owner's points are in the cache, not sent again."""

    kind = RESPONSE
    point_fields = ("double_blinded",)
    count: int
    start_digest: bytes
    seed: bytes
    exchange_public: bytes
    double_blinded: np.ndarray

    def step(self, job: str) -> psi_cache.QueryResponse:
        return psi_cache.QueryResponse(job, self.start_digest, self.double_blinded, self.seed, self.exchange_public)


@dataclass(frozen=True)
class Finish(_PsiMessage):
    """Hand-off 3, A to Pi: positions of the common ids in Pi's list, the seeds sealed to Pi."""

    kind = FINISH
    response_digest: bytes
    sealed_seeds: bytes
    positions: np.ndarray

    def step(self, job: str) -> psi.FinishMessage:
        return psi.FinishMessage(job, self.response_digest, self.positions, self.sealed_seeds)


@dataclass(frozen=True)
class Cache(_PsiMessage):
    """``psi-cache``, owner to user: the owner's blinded ids, sorted and truncated (packed)."""

    kind = CACHE
    count: int
    max_queries: int
    max_query_ids: int
    expires: str  # ISO 8601 with a time zone
    values: np.ndarray  # psi_cache.pack_values: the values without their common prefix
    prefix_counts: np.ndarray

    @classmethod
    def publish(cls, values: np.ndarray, limits: psi_cache.CacheLimits) -> Cache:
        rest, counts = psi_cache.pack_values(values)
        return cls(len(values), **_limits_meta(limits), values=rest, prefix_counts=counts)

    def step(self, job: str) -> psi_cache.CacheMessage:
        try:
            limits = _limits(self.max_queries, self.max_query_ids, self.expires)
        except ValueError as exc:
            raise InvalidArtifact("the cache's limits (max_queries, max_query_ids, expires) are malformed") from exc
        values = psi_cache.unpack_values(self.values, self.prefix_counts)
        return psi_cache.CacheMessage(cache_id=job, values=values, limits=limits)


def _received(cls: type[_PsiMessage], received: Mapping[str, Artifact], sender: str) -> Any:
    """The pure step's message in the artifact from ``sender``, bound to the artifact's job."""
    art = need(received, sender, cls.kind)
    return cls.decode(art).step(art.job)


# ----- states --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _AlignState(PartyState):
    """What every aligning party keeps: its ids between steps, then the alignment.

    A field set to None leaves no key in the job state: a secret dropped after its last use is
    gone from the stored state, not kept as null.
    """

    own_ids: np.ndarray | None = None  # psi.encode_ids of the ids this party blinded (private)
    data_sha256: str | None = None  # of the data file they were read from
    aligned_ids: np.ndarray | None = None
    aligned_rows: np.ndarray | None = None
    # Kept private (never sent, never in results): lets this party check a copy of the aligned
    # ids against the fingerprint later.
    digest_key: bytes | None = None

    def store(self, job: JobState) -> None:
        super().store(job)
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                job.data.pop(f.name, None)

    def keep_ids(self: T, ids: list[str], data_sha256: str) -> T:
        """Keep the ids this party blinded, and its data file's digest, for its next step."""
        return self.but(own_ids=np.frombuffer(psi.encode_ids(ids), dtype=np.uint8), data_sha256=data_sha256)

    def kept_ids(self, ctx: PartyContext) -> list[str]:
        """The ids kept by :meth:`keep_ids` while the data file is unchanged, else the file's ids
        read again (the protocol step then refuses them if the id column changed)."""
        if self.own_ids is not None and self.data_sha256 == _file_sha256(ctx.data_file()):
            return psi.decode_ids(self.own_ids.tobytes())
        return _own_ids(ctx)

    def aligned(self: T, alignment: psi.Alignment, out: list[Outgoing] | None = None, **dropped: None) -> Step[T]:
        """The last step: the alignment kept, the kept ids and ``dropped`` secrets gone, ``out`` sent."""
        state = self.but(
            own_ids=None, data_sha256=None, aligned_ids=np.array(alignment.ids, dtype=str),
            aligned_rows=np.asarray(alignment.rows, dtype=np.int64), digest_key=alignment.digest_key, **dropped,
        )
        results = {"intersection_size": len(alignment.ids), "fingerprint": alignment.fingerprint.hex()}
        return Step.finish(state, results, out)


def _secret_fields(state: PartyState, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields ``names`` of ``state``, refused if a step already dropped one."""
    values = {n: getattr(state, n) for n in names}
    missing = [n for n, v in values.items() if v is None]
    if missing:
        raise VflError(f"the alignment's job state lacks {', '.join(missing)}; run the alignment again")
    return values


@dataclass(frozen=True)
class ActiveAlign(_AlignState):
    """A between start and finish (:class:`vfl_cli.protocol.psi.ActiveState`; secret: alpha)."""

    scalar: bytes | None = None
    seed: bytes | None = None
    exchange_secret: bytes | None = None
    start_digest: bytes | None = None
    ids_digest: bytes | None = None
    order: np.ndarray | None = None

    _STEP: ClassVar[tuple[str, ...]] = ("scalar", "seed", "exchange_secret", "order", "start_digest", "ids_digest")

    def secret(self, ctx: PartyContext) -> psi.ActiveState:
        return psi.ActiveState(job_id=ctx.job, party=ctx.name, **_secret_fields(self, self._STEP))


@dataclass(frozen=True)
class PassiveAlign(_AlignState):
    """Pi between respond and conclude (:class:`vfl_cli.protocol.psi.PassiveState`; no scalar)."""

    seed: bytes | None = None
    seed_commitment: bytes | None = None
    response_digest: bytes | None = None
    ids_digest: bytes | None = None
    channel_key: bytes | None = None
    order: np.ndarray | None = None

    _STEP: ClassVar[tuple[str, ...]] = (
        "seed", "seed_commitment", "order", "response_digest", "ids_digest", "channel_key"
    )

    def secret(self, ctx: PartyContext) -> psi.PassiveState:
        return psi.PassiveState(job_id=ctx.job, party=ctx.name, active=ctx.active, **_secret_fields(self, self._STEP))


@dataclass(frozen=True)
class _Streamed(PartyState):
    """:mod:`vfl_cli.protocol.align_stream`'s state, which that module reads and writes; only
    whether it is there is read here (a streamed job's steps are align_stream's)."""

    stream: dict[str, Any] | None = None


# ----- the psi job -----------------------------------------------------------------------------------
def _own_ids(ctx: PartyContext) -> list[str]:
    df = ctx.data()
    return psi.normalise_ids(df[ctx.id_column].tolist(), column=ctx.id_column)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _salt(ctx: PartyContext) -> bytes:
    return bytes.fromhex(ctx.params["salt"])


def _send_start(ctx: PartyContext, state: ActiveAlign, received: Mapping[str, Artifact]) -> Step[ActiveAlign]:
    """A, hand-off 1: blind and shuffle its ids, commit to its seed (:func:`psi.start`)."""
    ids = _own_ids(ctx)
    kept = state.keep_ids(ids, _file_sha256(ctx.data_file()))
    secret, message = psi.start(ids, job_id=ctx.job, salt=_salt(ctx), party=ctx.name, progress=ctx.progress)
    new = kept.but(scalar=secret.scalar, seed=secret.seed, exchange_secret=secret.exchange_secret,
                   start_digest=secret.start_digest, ids_digest=secret.ids_digest, order=secret.order)
    start = Start(len(ids), message.seed_commitment, message.exchange_public, message.points)
    return Step(new, "wait-responses", [start.to(p, "start") for p in ctx.passives])


def _respond(ctx: PartyContext, state: PassiveAlign, received: Mapping[str, Artifact]) -> Step[PassiveAlign]:
    """Pi, hand-off 2: blind A's points again, blind and shuffle its own (:func:`psi.respond`)."""
    start: psi.StartMessage = _received(Start, received, ctx.active)
    read: list[tuple[list[str], str]] = []

    def load() -> list[str]:  # called while the active party's points are blinded
        read.append((_own_ids(ctx), _file_sha256(ctx.data_file())))
        return read[0][0]

    secret, response = psi.respond(
        load, start, job_id=ctx.job, salt=_salt(ctx), party=ctx.name, active=ctx.active, progress=ctx.progress
    )
    new = state.keep_ids(*read[0]).but(
        seed=secret.seed, seed_commitment=secret.seed_commitment, response_digest=secret.response_digest,
        ids_digest=secret.ids_digest, channel_key=secret.channel_key, order=secret.order,
    )
    reply = Response(len(secret.order), response.start_digest, response.seed, response.exchange_public,
                     response.double_blinded, response.points)
    return Step(new, "wait-finish", [reply.to(ctx.active, "response")])


def _finish(ctx: PartyContext, state: ActiveAlign, received: Mapping[str, Artifact]) -> Step[ActiveAlign]:
    """A, hand-off 3: intersect with every passive party, send each the positions (:func:`psi.finish`)."""
    responses = {p: _received(Response, received, p) for p in ctx.passives}
    alignment, messages = psi.finish(
        state.secret(ctx), lambda: state.kept_ids(ctx), responses, progress=ctx.progress
    )
    out = [
        Finish(m.response_digest, m.sealed_seeds, m.positions.astype(np.int64)).to(p, "finish")
        for p, m in messages.items()
    ]
    # The scalar is no longer needed; drop it so the stored state holds no secret.
    return state.aligned(alignment, out, order=None, scalar=None, seed=None, exchange_secret=None)


def _conclude(ctx: PartyContext, state: PassiveAlign, received: Mapping[str, Artifact]) -> Step[PassiveAlign]:
    """Pi, after hand-off 3: the alignment (:func:`psi.conclude`)."""
    message: psi.FinishMessage = _received(Finish, received, ctx.active)
    alignment = psi.conclude(state.secret(ctx), state.kept_ids(ctx), message)
    return state.aligned(alignment, order=None, seed=None, channel_key=None)  # secrets no later step needs


def _from_passives(kind: str) -> Callable[[PartyContext, Any], list[Expect]]:
    """``waits`` of the active party's phase that takes one ``kind`` artifact from every passive party."""
    return lambda ctx, state: [Expect(p, kind) for p in ctx.passives]


class Align(KitProtocol[Any]):
    """ECDH-PSI among one active and any number of passive parties (:mod:`vfl_cli.protocol.psi`)."""

    name = "psi"
    summary = "ECDH-PSI over X25519: common ids of all parties, in a jointly shuffled order"
    params_spec = {"salt": Hex(16, 64, note="default: 16 fresh random bytes")}
    states = {"active": ActiveAlign, "passive": PassiveAlign}

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _send_start),
            ("active", "wait-responses"): Phase(_from_passives(RESPONSE), _finish),
            ("passive", "start"): Phase(from_active(START), _respond),
            ("passive", "wait-finish"): Phase(from_active(FINISH), _conclude),
        }

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
        if not isinstance(params, Mapping):
            return typed_params(params, self.params_spec, what="psi")  # refused: not a table
        # No default in the spec: a fresh salt is drawn from the proposer's CSPRNG.
        given = params.get("salt")
        salt = secrets.token_hex(16) if given is None or given == "" else given
        rest = {k: v for k, v in params.items() if k != "cache"}
        checked = typed_params({**rest, "salt": salt}, self.params_spec, what="psi")
        if "cache" not in params:
            return checked
        # An unbalanced query: the id of the psi-cache job whose cached set it uses.
        if not is_name(params["cache"]):
            raise VflError(f"psi parameter cache must be a job id, got {params['cache']!r}")
        if len(parties) != 2:
            raise VflError("an alignment with a cache has exactly two parties: its user and its owner")
        return {**checked, "cache": params["cache"]}

    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        if _Streamed.load(state).stream is not None:  # a streamed alignment: one part per step
            return align_stream.expects(ctx, state)
        if "cache" in ctx.params:
            return _CACHED_QUERY.expects(ctx, state)
        return super().expects(ctx, state)

    def advance(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        """The job's variant runs its step: a query to a cache, a streamed alignment (sets too
        large for the memory bound), or the phase table above."""
        if "cache" in ctx.params:
            return _CACHED_QUERY.advance(ctx, state, received)
        if align_stream.streaming(ctx, state, received):
            return align_stream.Stream(ctx, state).advance(received, _salt(ctx))
        return super().advance(ctx, state, received)


# ----- unbalanced: the psi-cache job ------------------------------------------------------------------
def _limits(max_queries: int, max_query_ids: int, expires: str) -> psi_cache.CacheLimits:
    when = datetime.fromisoformat(expires)
    if when.tzinfo is None:
        raise ValueError("the expiry has no time zone")
    return psi_cache.CacheLimits(max_queries=max_queries, max_query_ids=max_query_ids, expires=when)


def _limits_meta(limits: psi_cache.CacheLimits) -> dict[str, Any]:
    return {
        "max_queries": limits.max_queries,
        "max_query_ids": limits.max_query_ids,
        "expires": limits.expires.isoformat(timespec="seconds"),
    }


@dataclass(frozen=True)
class _Limited(PartyState):
    """The limits of a published cache, as both parties keep them."""

    max_queries: int = 0
    max_query_ids: int = 0
    expires: str = ""

    def limits(self) -> psi_cache.CacheLimits:
        return _limits(self.max_queries, self.max_query_ids, self.expires)

    cached_ids: int = 0
    bytes_per_id: int = 0

    def results(self) -> dict[str, Any]:
        """The cache job's results: its size, width and limits (what both parties may see)."""
        return {"cached_ids": self.cached_ids, "bytes_per_id": self.bytes_per_id,
                "max_queries": self.max_queries, "max_query_ids": self.max_query_ids, "expires": self.expires}


def _cache_files(ctx: PartyContext, cache: str) -> ps.Scratch:
    """The private folder (0700) of cache job ``cache``'s lists: ``jobs/<cache>/cache``, beside
    the folder of ``ctx``'s job (a job id is a name, never a path)."""
    if ctx.scratch is None:
        raise VflError("a psi-cache job keeps its lists in files: it needs the job's folder")
    return ps.Scratch(ctx.scratch().parent.parent / cache / "cache")


@dataclass(frozen=True)
class CacheOwner(_Limited):
    """The passive owner's cache secret, kept until the cache expires: beta answers queries; its
    sorted order and ids are files (:func:`psi_cache.open_secret`)."""

    scalar: bytes = b""
    user: str = ""

    def secret(self, ctx: PartyContext, cache_id: str) -> psi_cache.CacheSecret:
        return psi_cache.open_secret(_cache_files(ctx, cache_id), n=self.cached_ids, cache_id=cache_id,
                                     owner=ctx.name, user=self.user, scalar=self.scalar, limits=self.limits())


@dataclass(frozen=True)
class CacheUser(_Limited):
    """The active user's copy of the cache (its values a file, :func:`psi_cache.mapped_values`)."""

    owner: str = ""

    def cached_set(self, ctx: PartyContext, cache_id: str) -> psi_cache.CachedSet:
        values = psi_cache.mapped_values(_cache_files(ctx, cache_id), self.cached_ids, self.bytes_per_id)
        return psi_cache.CachedSet(cache_id, values, self.limits())


def _publish(ctx: PartyContext, state: CacheOwner, received: Mapping[str, Artifact]) -> Step[CacheOwner]:
    """Owner: blind every id once with a long-lived beta, in bounded memory
    (:func:`psi_cache.publish_streamed`); the cache is sent as one artifact."""
    p = ctx.params
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=p["valid_days"])
    limits = psi_cache.CacheLimits(p["max_queries"], p["max_query_ids"], expires)
    files, budget = _cache_files(ctx, ctx.job), ps.Budget(ctx.memory or ps.DEFAULT_MEMORY)
    data = ctx.data_file()
    published = psi_cache.publish_streamed(
        ps.csv_chunks(data, ctx.id_column, budget.chunk, ctx.csv), files, budget,
        n_upper=align_stream.count_lines(data), cache_id=ctx.job, salt=_salt(ctx), limits=limits,
        progress=ctx.progress,
    )
    new = CacheOwner(**_limits_meta(limits), cached_ids=published.n, bytes_per_id=published.width,
                     scalar=published.scalar, user=ctx.active)
    values = psi_cache.mapped_values(files, published.n, published.width)
    out = [Cache.publish(values, limits).to(ctx.active, "cache")]
    return Step(new, "published", out, new.results())


def _keep_cache(ctx: PartyContext, state: CacheUser, received: Mapping[str, Artifact]) -> Step[CacheUser]:
    """User: check the cache (:func:`psi_cache.check_cache`) and keep its values as a file."""
    owner = ctx.passives[0]
    cached = psi_cache.check_cache(_received(Cache, received, owner), cache_id=ctx.job)
    _cache_files(ctx, ctx.job).write("values", cached.values)
    n, width = cached.values.shape
    new = CacheUser(**_limits_meta(cached.limits), cached_ids=n, bytes_per_id=width, owner=owner)
    return Step(new, "cached", [], new.results())


class AlignCache(KitProtocol[Any]):
    """Publish a passive party's blinded id set once, for cheap later alignments (psi_cache)."""

    name = "psi-cache"
    summary = "a passive party's blinded ids, cached by the active party for small alignments"
    params_spec = {
        "salt": Hex(16, 64, note="default: 16 fresh random bytes"),
        "max_queries": Int(30, 1, 100_000, note="alignments the cache may serve"),
        "max_query_ids": Int(100_000, 1, 10_000_000, note="ids per alignment"),
        "valid_days": Int(30, 1, 366, note="days until the cache expires"),
    }
    states = {"active": CacheUser, "passive": CacheOwner}

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("passive", "start"): Phase(nothing, _publish),
            ("active", "start"): Phase(lambda ctx, s: [Expect(ctx.passives[0], CACHE)], _keep_cache),
        }

    def check_parties(self, parties: list[dict[str, str]]) -> None:
        super().check_parties(parties)
        if len(parties) != 2:
            raise VflError("psi-cache has exactly two parties: the passive owner and the active user")

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
        given = params.get("salt") if isinstance(params, Mapping) else None
        salt = secrets.token_hex(16) if given is None or given == "" else given
        return typed_params({**params, "salt": salt} if isinstance(params, Mapping) else params,
                            self.params_spec, what="psi-cache")


# ----- unbalanced: a psi job with a cache ------------------------------------------------------------
def query_number(job_id: str, cache: str) -> int:
    """The number N of a query job, whose id must be ``<cache>-q<N>``.

    Job ids are unique in a workspace (a replayed proposal is refused), so the owner answers each
    number at most once and can count queries without any counter of its own.

    Raises:
        DataError: the id has another form.
    """
    match = re.fullmatch(re.escape(cache) + r"-q([1-9][0-9]{0,6})", job_id)
    if match is None:
        raise DataError(
            f"an alignment with cache {cache} must be job {cache}-q<N> (N = 1, 2, ... once each), "
            f"not {job_id!r}"
        )
    return int(match.group(1))


@dataclass(frozen=True)
class _Query:
    """A query job's cache: its id, the query's number, the cache job's parameters and state."""

    cache: str
    number: int
    salt: bytes
    state: JobState  # the cache job's, as this party keeps it

    @classmethod
    def of(cls, ctx: PartyContext) -> _Query:
        """The cache ``ctx``'s job queries, refused unless it is a cache published between these parties."""
        cache = str(ctx.params["cache"])
        number = query_number(ctx.job, cache)
        info = ctx.job_info(cache)
        if info["protocol"] != "psi-cache" or not info["done"]:
            raise DataError(f"job {cache} is not a published cache (psi-cache job) on {ctx.name}")
        names = sorted(p["name"] for p in info["parties"])
        if names != sorted(p["name"] for p in ctx.parties):
            raise DataError(
                f"cache {cache} was published between {' and '.join(names)}; a cache is never used "
                "with another peer"
            )
        state = JobState(data=info["state"], arrays=ctx.job_arrays(cache))
        return cls(cache, number, bytes.fromhex(info["params"]["salt"]), state)


@dataclass(frozen=True)
class QueryUser(_AlignState):
    """The active user between start and finish (:class:`vfl_cli.protocol.psi_cache.QueryState`)."""

    inverse: bytes | None = None  # undoes alpha (alpha itself is not needed again)
    seed: bytes | None = None
    exchange_secret: bytes | None = None
    start_digest: bytes | None = None
    ids_digest: bytes | None = None
    order: np.ndarray | None = None

    _STEP: ClassVar[tuple[str, ...]] = ("inverse", "seed", "exchange_secret", "order", "start_digest", "ids_digest")

    def secret(self, ctx: PartyContext) -> psi_cache.QueryState:
        return psi_cache.QueryState(job_id=ctx.job, party=ctx.name, **_secret_fields(self, self._STEP))


@dataclass(frozen=True)
class QueryOwner(_AlignState):
    """The passive owner between respond and conclude (its points are the cache's)."""

    seed: bytes | None = None
    seed_commitment: bytes | None = None
    response_digest: bytes | None = None
    channel_key: bytes | None = None

    _STEP: ClassVar[tuple[str, ...]] = ("seed", "seed_commitment", "response_digest", "channel_key")

    def secret(self, ctx: PartyContext) -> psi_cache.OwnerQueryState:
        return psi_cache.OwnerQueryState(
            job_id=ctx.job, party=ctx.name, active=ctx.active, **_secret_fields(self, self._STEP)
        )


def _start_query(ctx: PartyContext, state: QueryUser, received: Mapping[str, Artifact]) -> Step[QueryUser]:
    """User, hand-off 1 against the cache (:func:`psi_cache.start_query`)."""
    query = _Query.of(ctx)
    ids = _own_ids(ctx)
    kept = state.keep_ids(ids, _file_sha256(ctx.data_file()))
    secret, message = psi_cache.start_query(
        ids, CacheUser.load(query.state).cached_set(ctx, query.cache), job_id=ctx.job, query=query.number,
        salt=query.salt, party=ctx.name, now=datetime.now(timezone.utc), progress=ctx.progress,
    )
    new = kept.but(inverse=secret.inverse, seed=secret.seed, exchange_secret=secret.exchange_secret,
                   start_digest=secret.start_digest, ids_digest=secret.ids_digest, order=secret.order)
    start = Start(len(ids), message.seed_commitment, message.exchange_public, message.points)
    return Step(new, "wait-responses", [start.to(ctx.passives[0], "start")])


def _respond_query(ctx: PartyContext, state: QueryOwner, received: Mapping[str, Artifact]) -> Step[QueryOwner]:
    """Owner, hand-off 2: the user's points blinded with the cache's beta (:func:`psi_cache.respond_query`)."""
    query = _Query.of(ctx)
    if ctx.data_file() != ctx.data_file(query.cache):
        raise DataError(f"cache {query.cache} holds the ids of {ctx.data_file(query.cache)}; "
                        f"respond with --data {ctx.data_file(query.cache)}")
    start: psi.StartMessage = _received(Start, received, ctx.active)
    secret, response = psi_cache.respond_query(
        start, CacheOwner.load(query.state).secret(ctx, query.cache), job_id=ctx.job, query=query.number,
        active=ctx.active, now=datetime.now(timezone.utc), progress=ctx.progress,
    )
    new = state.but(seed=secret.seed, seed_commitment=secret.seed_commitment,
                    response_digest=secret.response_digest, channel_key=secret.channel_key)
    reply = CachedResponse(len(response.double_blinded), response.start_digest, response.seed,
                           response.exchange_public, response.double_blinded)
    return Step(new, "wait-finish", [reply.to(ctx.active, "response")])


def _finish_query(ctx: PartyContext, state: QueryUser, received: Mapping[str, Artifact]) -> Step[QueryUser]:
    """User, hand-off 3: the alignment, and the positions for the owner (:func:`psi_cache.finish_query`)."""
    query = _Query.of(ctx)
    owner = ctx.passives[0]
    secret = state.secret(ctx)
    response: psi_cache.QueryResponse = _received(CachedResponse, received, owner)
    alignment, message = psi_cache.finish_query(
        secret, state.kept_ids(ctx), CacheUser.load(query.state).cached_set(ctx, query.cache), response,
        owner=owner
    )
    out = [Finish(message.response_digest, message.sealed_seeds, message.positions).to(owner, "finish")]
    return state.aligned(alignment, out, order=None, inverse=None, seed=None, exchange_secret=None)


def _conclude_query(ctx: PartyContext, state: QueryOwner, received: Mapping[str, Artifact]) -> Step[QueryOwner]:
    """Owner, after hand-off 3: the alignment (:func:`psi_cache.conclude_query`)."""
    query = _Query.of(ctx)
    message: psi.FinishMessage = _received(Finish, received, ctx.active)
    cache = CacheOwner.load(query.state).secret(ctx, query.cache)
    alignment = psi_cache.conclude_query(state.secret(ctx), cache, message)
    return state.aligned(alignment, seed=None, channel_key=None)


class CachedQuery(KitProtocol[Any]):
    """A ``psi`` job with ``cache``: the unbalanced steps of :mod:`vfl_cli.protocol.psi_cache`.

    Not registered: :class:`Align` runs it for a job whose parameters name a cache.
    """

    name = "psi"
    states = {"active": QueryUser, "passive": QueryOwner}

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _start_query),
            ("active", "wait-responses"): Phase(_from_passives(RESPONSE), _finish_query),
            ("passive", "start"): Phase(from_active(START), _respond_query),
            ("passive", "wait-finish"): Phase(from_active(FINISH), _conclude_query),
        }


_CACHED_QUERY = CachedQuery()
