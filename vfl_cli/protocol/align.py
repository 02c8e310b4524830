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
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, ndarray_member, points_member
from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.protocol import psi
from vfl_cli.protocol.base import Expect, Hex, JobState, Outgoing, PartyContext, Protocol, need, typed_params

START = "psi/start"
RESPONSE = "psi/response"
FINISH = "psi/finish"


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
        # No default in the spec: a fresh salt is drawn from the proposer's CSPRNG.
        given = params.get("salt") if isinstance(params, Mapping) else None
        salt = secrets.token_hex(16) if given is None or given == "" else given
        return typed_params({**params, "salt": salt} if isinstance(params, Mapping) else params,
                            self.params_spec, what="psi")

    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        if ctx.is_active:
            return [] if state.phase == "start" else [Expect(p, RESPONSE) for p in ctx.passives]
        return [Expect(ctx.active, START if state.phase == "start" else FINISH)]

    def advance(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        salt = bytes.fromhex(ctx.params["salt"])
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
