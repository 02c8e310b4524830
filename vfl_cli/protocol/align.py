"""The ``psi`` job: private set intersection alignment as a protocol state machine.

The cryptographic steps live in :mod:`vfl_cli.protocol.psi` (see its docstring and
docs/protocols/psi.md for the threat model and what each message reveals); this module maps
them onto artifacts and resumable job state:

=====================  ===========================  =========================================
hand-off               artifact kind                payload
=====================  ===========================  =========================================
1  active -> passive   ``psi/start``                A's blinded, shuffled points; seed commitment;
                                                    A's ephemeral key-exchange public key
2  passive -> active   ``psi/response``             A's points re-blinded; Pi's blinded points; seed;
                                                    Pi's ephemeral key-exchange public key
3  active -> passive   ``psi/finish``               positions of the common ids in Pi's list; every
                                                    seed, sealed to Pi
=====================  ===========================  =========================================

Afterwards every party holds, in its own job state, the common ids in the jointly shuffled
order (``aligned_ids``) and the row of its own file for each (``aligned_rows``). The party's
secret scalar is kept in its private job state between hand-offs and never sent. The results
carry the size and the keyed fingerprint only (:func:`vfl_cli.protocol.psi.alignment_fingerprint`):
no plain hash of ids, which anyone holding it could test a guessed intersection against.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, ndarray_member, points_member
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.names import is_name
from vfl_cli.protocol import align_stream, psi, psi_cache
from vfl_cli.protocol.base import (
    Expect,
    Hex,
    Int,
    JobState,
    Outgoing,
    PartyContext,
    Protocol,
    need,
    typed_params,
)

START = "psi/start"
RESPONSE = "psi/response"
FINISH = "psi/finish"
CACHE = "psi/cache"


def _hex(b: bytes) -> str:
    return b.hex()


def _unhex(value: Any, what: str) -> bytes:
    try:
        return bytes.fromhex(str(value))
    except ValueError as exc:
        raise InvalidArtifact(f"{what} is not hex") from exc


def _own_ids(ctx: PartyContext) -> list[str]:
    df = ctx.data()
    return psi.normalise_ids(df[ctx.id_column].tolist(), column=ctx.id_column)


def _keep_ids(ctx: PartyContext, state: JobState, ids: list[str]) -> None:
    """Keep the ids this party blinded, and its data file's digest, for its next step.

    The ids stay in the party's private job state (never sent) until the alignment is done.
    """
    state.arrays["own_ids"] = np.frombuffer(psi.encode_ids(ids), dtype=np.uint8)
    state.data["data_sha256"] = _file_sha256(ctx.data_file())


def _kept_ids(ctx: PartyContext, state: JobState) -> list[str]:
    """The ids kept by :func:`_keep_ids` while the data file is unchanged, else the file's ids
    read again (the protocol step then refuses them if the id column changed)."""
    blob = state.arrays.pop("own_ids", None)
    digest = state.data.pop("data_sha256", None)
    if blob is not None and digest == _file_sha256(ctx.data_file()):
        return psi.decode_ids(blob.tobytes())
    return _own_ids(ctx)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _finish_state(state: JobState, alignment: psi.Alignment) -> None:
    ids = alignment.ids
    state.arrays["aligned_ids"] = np.array(ids, dtype=str)
    state.arrays["aligned_rows"] = np.asarray(alignment.rows, dtype=np.int64)
    # Kept private (never sent, never in results): lets this party check a copy of the aligned
    # ids against the fingerprint later.
    state.data["digest_key"] = alignment.digest_key.hex()
    state.results = {
        "intersection_size": len(ids),
        "fingerprint": alignment.fingerprint.hex(),
    }
    state.phase = "done"
    state.done = True


class Align(Protocol):
    name = "psi"
    summary = "ECDH-PSI over X25519: common ids of all parties, in a jointly shuffled order"
    params_spec = {"salt": Hex(16, 64, note="default: 16 fresh random bytes")}

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
        if "stream" in state.data:  # a streamed alignment (align_stream): one part per step
            return align_stream.expects(ctx, state)
        if ctx.is_active:
            return [] if state.phase == "start" else [Expect(p, RESPONSE) for p in ctx.passives]
        return [Expect(ctx.active, START if state.phase == "start" else FINISH)]

    def advance(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        if "cache" in ctx.params:
            return _CachedQuery(ctx, state).advance(received)
        salt = bytes.fromhex(ctx.params["salt"])
        if align_stream.streaming(ctx, state, received):  # sets too large for the memory bound
            return align_stream.Stream(ctx, state).advance(received, salt)
        if ctx.is_active and state.phase == "start":
            return self._start(ctx, state, salt)
        if ctx.is_active:
            return self._finish(ctx, state, received)
        if state.phase == "start":
            return self._respond(ctx, state, received, salt)
        return self._conclude(ctx, state, received)

    # ----- active party ----------------------------------------------------------------------
    def _start(self, ctx: PartyContext, state: JobState, salt: bytes) -> list[Outgoing]:
        ids = _own_ids(ctx)
        _keep_ids(ctx, state, ids)
        secret, message = psi.start(ids, job_id=ctx.job, salt=salt, party=ctx.name, progress=ctx.progress)
        state.data.update(
            scalar=_hex(secret.scalar),
            seed=_hex(secret.seed),
            exchange_secret=_hex(secret.exchange_secret),
            start_digest=_hex(secret.start_digest),
            ids_digest=_hex(secret.ids_digest),
        )
        state.arrays["order"] = secret.order
        state.phase = "wait-responses"
        meta = {
            "count": len(ids),
            "seed_commitment": _hex(message.seed_commitment),
            "exchange_public": _hex(message.exchange_public),
        }
        return [
            Outgoing(p, START, "start", members=[points_member("points", message.points)], meta=meta)
            for p in ctx.passives
        ]

    def _finish(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        d = state.data
        secret = psi.ActiveState(
            job_id=ctx.job,
            party=ctx.name,
            scalar=bytes.fromhex(d["scalar"]),
            seed=bytes.fromhex(d["seed"]),
            exchange_secret=bytes.fromhex(d["exchange_secret"]),
            order=state.arrays["order"],
            start_digest=bytes.fromhex(d["start_digest"]),
            ids_digest=bytes.fromhex(d["ids_digest"]),
        )
        responses = {}
        for p in ctx.passives:
            art = need(received, p, RESPONSE)
            responses[p] = psi.ResponseMessage(
                job_id=art.job,
                start_digest=_unhex(art.meta.get("start_digest"), f"{p}'s start_digest"),
                double_blinded=art.points("double_blinded"),
                points=art.points("points"),
                seed=_unhex(art.meta.get("seed"), f"{p}'s seed"),
                exchange_public=_unhex(art.meta.get("exchange_public"), f"{p}'s exchange key"),
            )
        alignment, messages = psi.finish(
            secret, lambda: _kept_ids(ctx, state), responses, progress=ctx.progress
        )
        _finish_state(state, alignment)
        state.arrays.pop("order", None)
        # The scalar is no longer needed; drop it so the stored state holds no secret.
        for key in ("scalar", "seed", "exchange_secret"):
            state.data.pop(key, None)
        return [
            Outgoing(
                p,
                FINISH,
                "finish",
                members=[ndarray_member("positions", m.positions.astype(np.int64))],
                meta={
                    "response_digest": _hex(m.response_digest),
                    "sealed_seeds": _hex(m.sealed_seeds),
                },
            )
            for p, m in messages.items()
        ]

    # ----- passive party -----------------------------------------------------------------------
    def _respond(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact], salt: bytes
    ) -> list[Outgoing]:
        art = need(received, ctx.active, START)
        message = psi.StartMessage(
            job_id=art.job,
            points=art.points("points"),
            seed_commitment=_unhex(art.meta.get("seed_commitment"), "the seed commitment"),
            exchange_public=_unhex(art.meta.get("exchange_public"), "the exchange key"),
        )
        def load() -> list[str]:  # called while the active party's points are blinded
            ids = _own_ids(ctx)
            _keep_ids(ctx, state, ids)
            return ids

        secret, response = psi.respond(
            load, message, job_id=ctx.job, salt=salt, party=ctx.name, active=ctx.active,
            progress=ctx.progress,
        )
        state.data.update(
            seed=_hex(secret.seed),
            seed_commitment=_hex(secret.seed_commitment),
            response_digest=_hex(secret.response_digest),
            ids_digest=_hex(secret.ids_digest),
            channel_key=_hex(secret.channel_key),
        )
        state.arrays["order"] = secret.order
        state.phase = "wait-finish"
        return [
            Outgoing(
                ctx.active,
                RESPONSE,
                "response",
                members=[
                    points_member("double_blinded", response.double_blinded),
                    points_member("points", response.points),
                ],
                meta={
                    "count": len(secret.order),
                    "start_digest": _hex(response.start_digest),
                    "seed": _hex(response.seed),
                    "exchange_public": _hex(response.exchange_public),
                },
            )
        ]

    def _conclude(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        art = need(received, ctx.active, FINISH)
        d = state.data
        secret = psi.PassiveState(
            job_id=ctx.job,
            party=ctx.name,
            active=ctx.active,
            seed=bytes.fromhex(d["seed"]),
            seed_commitment=bytes.fromhex(d["seed_commitment"]),
            order=state.arrays["order"],
            response_digest=bytes.fromhex(d["response_digest"]),
            ids_digest=bytes.fromhex(d["ids_digest"]),
            channel_key=bytes.fromhex(d["channel_key"]),
        )
        message = psi.FinishMessage(
            job_id=art.job,
            response_digest=_unhex(art.meta.get("response_digest"), "the response digest"),
            positions=art.array("positions"),
            sealed_seeds=_unhex(art.meta.get("sealed_seeds"), "the sealed seeds"),
        )
        alignment = psi.conclude(secret, _kept_ids(ctx, state), message)
        _finish_state(state, alignment)
        state.arrays.pop("order", None)
        for key in ("seed", "channel_key"):  # secrets no later step needs
            state.data.pop(key, None)
        return []


# --------------------------------------------------------------------------- unbalanced, cached

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


def _limits(data: Mapping[str, Any]) -> psi_cache.CacheLimits:
    expires = datetime.fromisoformat(str(data["expires"]))
    if expires.tzinfo is None:
        raise ValueError("the expiry has no time zone")
    return psi_cache.CacheLimits(
        max_queries=int(data["max_queries"]), max_query_ids=int(data["max_query_ids"]), expires=expires
    )


def _limits_meta(limits: psi_cache.CacheLimits) -> dict[str, Any]:
    return {
        "max_queries": limits.max_queries,
        "max_query_ids": limits.max_query_ids,
        "expires": limits.expires.isoformat(timespec="seconds"),
    }


def _cache_job(ctx: PartyContext, cache: str) -> dict[str, Any]:
    """This party's record of cache job ``cache``, refused unless it is a published cache."""
    info = ctx.job_info(cache)
    if info["protocol"] != "psi-cache" or not info["done"]:
        raise DataError(f"job {cache} is not a published cache (psi-cache job) on {ctx.name}")
    names = sorted(p["name"] for p in info["parties"])
    if names != sorted(p["name"] for p in ctx.parties):
        raise DataError(
            f"cache {cache} was published between {' and '.join(names)}; a cache is never used "
            "with another peer"
        )
    return info


class AlignCache(Protocol):
    """Publish a passive party's blinded id set once, for cheap later alignments (psi_cache)."""

    name = "psi-cache"
    summary = "a passive party's blinded ids, cached by the active party for small alignments"
    params_spec = {
        "salt": Hex(16, 64, note="default: 16 fresh random bytes"),
        "max_queries": Int(30, 1, 100_000, note="alignments the cache may serve"),
        "max_query_ids": Int(100_000, 1, 10_000_000, note="ids per alignment"),
        "valid_days": Int(30, 1, 366, note="days until the cache expires"),
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

    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        return [] if not ctx.is_active else [Expect(ctx.passives[0], CACHE)]

    def advance(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        if ctx.is_active:
            return self._keep(ctx, state, received)
        ids = _own_ids(ctx)
        p = ctx.params
        expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=p["valid_days"])
        limits = psi_cache.CacheLimits(p["max_queries"], p["max_query_ids"], expires)
        secret, message = psi_cache.publish_cache(
            ids, cache_id=ctx.job, salt=bytes.fromhex(p["salt"]), owner=ctx.name, user=ctx.active,
            limits=limits, progress=ctx.progress,
        )
        # beta stays in this private job state until the cache expires: it is what answers queries.
        state.data.update(scalar=_hex(secret.scalar), user=ctx.active, **_limits_meta(limits))
        state.arrays.update(cache_order=secret.order, cache_id_bytes=secret.id_bytes,
                            cache_id_offsets=secret.id_offsets)
        state.results = {"cached_ids": len(ids), "bytes_per_id": int(message.values.shape[1]),
                         **_limits_meta(limits)}
        state.phase, state.done = "published", True
        meta = {"count": len(ids), **_limits_meta(limits)}
        rest, counts = psi_cache.pack_values(message.values)
        members = [ndarray_member("values", rest), ndarray_member("prefix_counts", counts)]
        return [Outgoing(ctx.active, CACHE, "cache", members=members, meta=meta)]

    def _keep(self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]) -> list[Outgoing]:
        art = need(received, ctx.passives[0], CACHE)
        try:
            limits = _limits(art.meta)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArtifact("the cache's limits (max_queries, max_query_ids, expires) are malformed") from exc
        values = psi_cache.unpack_values(art.array("values"), art.array("prefix_counts"))
        message = psi_cache.CacheMessage(cache_id=art.job, values=values, limits=limits)
        cached = psi_cache.check_cache(message, cache_id=ctx.job)
        state.arrays["cache_values"] = cached.values
        state.data.update(owner=ctx.passives[0], **_limits_meta(limits))
        state.results = {"cached_ids": len(cached.values), "bytes_per_id": int(cached.values.shape[1]),
                         **_limits_meta(limits)}
        state.phase, state.done = "cached", True
        return []


class _CachedQuery:
    """A psi job with ``cache``: the unbalanced steps of :mod:`vfl_cli.protocol.psi_cache`."""

    def __init__(self, ctx: PartyContext, state: JobState) -> None:
        self.ctx, self.state = ctx, state
        self.cache = str(ctx.params["cache"])
        self.query = query_number(ctx.job, self.cache)
        self.info = _cache_job(ctx, self.cache)
        self.salt = bytes.fromhex(self.info["params"]["salt"])

    def advance(self, received: Mapping[str, Artifact]) -> list[Outgoing]:
        ctx, state = self.ctx, self.state
        if ctx.is_active:
            return self._start() if state.phase == "start" else self._finish(received)
        return self._respond(received) if state.phase == "start" else self._conclude(received)

    def _cached_set(self) -> psi_cache.CachedSet:
        values = self.ctx.job_arrays(self.cache)["cache_values"]
        return psi_cache.CachedSet(self.cache, values, _limits(self.info["state"]))

    def _secret(self) -> psi_cache.CacheSecret:
        d, arrays = self.info["state"], self.ctx.job_arrays(self.cache)
        return psi_cache.CacheSecret(
            cache_id=self.cache, owner=self.ctx.name, user=str(d["user"]),
            scalar=bytes.fromhex(d["scalar"]), order=arrays["cache_order"],
            id_bytes=arrays["cache_id_bytes"], id_offsets=arrays["cache_id_offsets"], limits=_limits(d),
        )

    def _start(self) -> list[Outgoing]:
        ctx, state = self.ctx, self.state
        ids = _own_ids(ctx)
        _keep_ids(ctx, state, ids)
        secret, message = psi_cache.start_query(
            ids, self._cached_set(), job_id=ctx.job, query=self.query, salt=self.salt, party=ctx.name,
            now=datetime.now(timezone.utc), progress=ctx.progress,
        )
        state.data.update(inverse=_hex(secret.inverse), seed=_hex(secret.seed),
                          exchange_secret=_hex(secret.exchange_secret),
                          start_digest=_hex(secret.start_digest), ids_digest=_hex(secret.ids_digest))
        state.arrays["order"] = secret.order
        state.phase = "wait-responses"
        meta = {"count": len(ids), "seed_commitment": _hex(message.seed_commitment),
                "exchange_public": _hex(message.exchange_public)}
        return [Outgoing(ctx.passives[0], START, "start",
                         members=[points_member("points", message.points)], meta=meta)]

    def _respond(self, received: Mapping[str, Artifact]) -> list[Outgoing]:
        ctx, state = self.ctx, self.state
        if ctx.data_file() != ctx.data_file(self.cache):
            raise DataError(f"cache {self.cache} holds the ids of {ctx.data_file(self.cache)}; "
                            f"respond with --data {ctx.data_file(self.cache)}")
        art = need(received, ctx.active, START)
        message = psi.StartMessage(
            job_id=art.job, points=art.points("points"),
            seed_commitment=_unhex(art.meta.get("seed_commitment"), "the seed commitment"),
            exchange_public=_unhex(art.meta.get("exchange_public"), "the exchange key"),
        )
        secret, response = psi_cache.respond_query(
            message, self._secret(), job_id=ctx.job, query=self.query, active=ctx.active,
            now=datetime.now(timezone.utc), progress=ctx.progress,
        )
        state.data.update(seed=_hex(secret.seed), seed_commitment=_hex(secret.seed_commitment),
                          response_digest=_hex(secret.response_digest),
                          channel_key=_hex(secret.channel_key))
        state.phase = "wait-finish"
        meta = {"count": len(response.double_blinded), "start_digest": _hex(response.start_digest),
                "seed": _hex(response.seed), "exchange_public": _hex(response.exchange_public)}
        return [Outgoing(ctx.active, RESPONSE, "response",
                         members=[points_member("double_blinded", response.double_blinded)], meta=meta)]

    def _finish(self, received: Mapping[str, Artifact]) -> list[Outgoing]:
        ctx, state, d = self.ctx, self.state, self.state.data
        owner = ctx.passives[0]
        secret = psi_cache.QueryState(
            job_id=ctx.job, party=ctx.name, inverse=bytes.fromhex(d["inverse"]),
            seed=bytes.fromhex(d["seed"]), exchange_secret=bytes.fromhex(d["exchange_secret"]),
            order=state.arrays["order"], start_digest=bytes.fromhex(d["start_digest"]),
            ids_digest=bytes.fromhex(d["ids_digest"]),
        )
        art = need(received, owner, RESPONSE)
        response = psi_cache.QueryResponse(
            job_id=art.job, start_digest=_unhex(art.meta.get("start_digest"), f"{owner}'s start_digest"),
            double_blinded=art.points("double_blinded"), seed=_unhex(art.meta.get("seed"), f"{owner}'s seed"),
            exchange_public=_unhex(art.meta.get("exchange_public"), f"{owner}'s exchange key"),
        )
        alignment, message = psi_cache.finish_query(
            secret, _kept_ids(ctx, state), self._cached_set(), response, owner=owner)
        _finish_state(state, alignment)
        state.arrays.pop("order", None)
        for key in ("inverse", "seed", "exchange_secret"):
            state.data.pop(key, None)
        meta = {"response_digest": _hex(message.response_digest), "sealed_seeds": _hex(message.sealed_seeds)}
        return [Outgoing(owner, FINISH, "finish",
                         members=[ndarray_member("positions", message.positions)], meta=meta)]

    def _conclude(self, received: Mapping[str, Artifact]) -> list[Outgoing]:
        ctx, state, d = self.ctx, self.state, self.state.data
        art = need(received, ctx.active, FINISH)
        secret = psi_cache.OwnerQueryState(
            job_id=ctx.job, party=ctx.name, active=ctx.active, seed=bytes.fromhex(d["seed"]),
            seed_commitment=bytes.fromhex(d["seed_commitment"]),
            response_digest=bytes.fromhex(d["response_digest"]), channel_key=bytes.fromhex(d["channel_key"]),
        )
        message = psi.FinishMessage(
            job_id=art.job, response_digest=_unhex(art.meta.get("response_digest"), "the response digest"),
            positions=art.array("positions"), sealed_seeds=_unhex(art.meta.get("sealed_seeds"), "the sealed seeds"),
        )
        alignment = psi_cache.conclude_query(secret, self._secret(), message)
        _finish_state(state, alignment)
        for key in ("seed", "channel_key"):
            state.data.pop(key, None)
        return []
