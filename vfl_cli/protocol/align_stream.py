"""The ``psi`` job, streamed: :mod:`vfl_cli.protocol.psi_stream`'s parts as artifacts.

Chosen by the active party when its in-memory peak would pass its memory bound
(:func:`vfl_cli.protocol.psi_stream.choose`); the passive party follows (the start parts say
``stream``). Each part is a normal signed, sealed artifact of the usual kind (``psi/start``,
``psi/response``, ``psi/finish``) with ``part`` and ``parts`` in its meta; the engine's sequence
numbers deliver them in order, and each step takes or sends one part, so no step holds more
than one part. Large lists stay in the job's private ``scratch/`` folder, removed when the
alignment ends.

=====================  ==========================================================================
phase                  what the step does
=====================  ==========================================================================
active ``start``       blind and sort its ids (scratch), send start part 1
active ``send-start``  send the next start part (no input)
passive ``start``      first start part: blind and sort its ids; every start part: re-blind it
                       and send it back as a response part
passive ``send-points`` send the next part of its own sorted points (no input)
active ``wait-responses`` take a response part (re-blind the peer's points as they come); after
                       the last: intersect, order, send finish part 1
active ``send-finish`` send the next finish part (positions in the peer's list)
passive ``wait-finish`` take a finish part; after the last: the alignment
=====================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member, ndarray_member, points_member
from vfl_cli.protocol import psi_stream as ps
from vfl_cli.protocol.base import Expect, JobState, Outgoing, PartyContext, need
from vfl_cli.protocol.kit import PartyState

_STEPS = {ps.START: "start", ps.RESPONSE: "response", ps.FINISH: "finish"}


def streaming(ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]) -> bool:
    """Whether this job streams: decided by the active party at its first step, followed by the
    passive party from the first start part."""
    if ps.ActiveStream.present(state):
        return True
    if state.phase != "start" or ctx.scratch is None:
        return False
    if ctx.is_active:
        n = count_lines(ctx.data_file())
        return ps.choose(n, ctx.memory or ps.DEFAULT_MEMORY, len(ctx.passives))
    art = received.get(ctx.active)
    return art is not None and art.meta.get("stream") == 1


def count_lines(path: Any) -> int:
    """An upper bound on a CSV's rows: its line breaks, read 16 MiB at a time."""
    lines = 0
    with open(path, "rb") as fh:
        while block := fh.read(16 << 20):
            lines += block.count(b"\n")
    return lines


def expects(ctx: PartyContext, state: JobState) -> list[Expect]:
    phase = state.phase
    if phase in ("start", "send-start", "send-points", "send-finish") and (ctx.is_active or phase != "start"):
        return []
    if ctx.is_active:
        return [Expect(ctx.passives[0], ps.RESPONSE)]
    return [Expect(ctx.active, ps.FINISH if phase == "wait-finish" else ps.START)]


@dataclass(frozen=True)
class Aligned(PartyState):
    """The finished alignment as the ``psi`` job keeps it (the names the in-memory path uses):
    the ids in the joint order, their rows in this party's file, the fingerprint key."""

    aligned_ids: np.ndarray | None = None
    aligned_rows: np.ndarray | None = None
    digest_key: bytes = b""


@dataclass(frozen=True)
class StreamedWith(PartyState):
    """How a finished alignment was streamed: the memory bound and part size."""

    streamed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Moved:
    """What one streamed step produced: the party's new state, its next phase, the part to send
    (or None), and the alignment once this party has it."""

    state: ps.ActiveStream | ps.PassiveStream
    phase: str
    part: ps.Part | None = None
    result: ps.StreamAlignment | None = None
    done: bool = False


class Stream:
    """One party's streamed alignment step: load the typed state, run the phase's step, and
    only then write the new state into the job (a refused part changes nothing)."""

    def __init__(self, ctx: PartyContext, state: JobState) -> None:
        assert ctx.scratch is not None
        self.ctx, self.state = ctx, state
        self.budget = ps.Budget(ctx.memory or ps.DEFAULT_MEMORY)
        self.scratch = ps.Scratch(ctx.scratch())
        self.chunks = ps.csv_chunks(ctx.data_file(), ctx.id_column, self.budget.chunk, ctx.csv)

    def advance(self, received: Mapping[str, Artifact], salt: bytes) -> list[Outgoing]:
        ctx = self.ctx
        moved = (_ACTIVE if ctx.is_active else _PASSIVE)[self.state.phase](self, received, salt)
        to = ctx.passives[0] if ctx.is_active else ctx.active
        out = _send(moved.part, to)
        moved.state.store(self.state)
        self.state.phase = moved.phase
        if moved.result is not None:
            self._keep(moved.result, final=moved.done)
        if moved.done:
            self._done(moved.state)
        return out

    # ----- the active party
    def _active_start(self, received: Mapping[str, Artifact], salt: bytes) -> Moved:
        ctx = self.ctx
        s = ps.active_begin(self.chunks, job_id=ctx.job, salt=salt, party=ctx.name, scratch=self.scratch,
                            budget=self.budget, progress=ctx.progress)
        return self._active_send_start(s)

    def _active_send_start(self, s: ps.ActiveStream) -> Moved:
        s, part = ps.active_next_start(s, self.scratch)
        return Moved(s, "send-start" if s.sent < s.start_parts else "wait-responses", part)

    def _active_take(self, received: Mapping[str, Artifact], salt: bytes) -> Moved:
        peer = self.ctx.passives[0]
        art = need(received, peer, ps.RESPONSE)
        s = ps.active_take(ps.ActiveStream.load(self.state), _part(art), self.scratch, peer=peer,
                           progress=self.ctx.progress)
        if not s.responses_in:
            return Moved(s, "wait-responses")
        s, result = ps.active_conclude(s, self.chunks, self.scratch, self.budget)
        return self._active_send_finish(s, result)

    def _active_send_finish(self, s: ps.ActiveStream, result: ps.StreamAlignment | None = None) -> Moved:
        s, part = ps.active_next_finish(s, self.scratch)
        more = s.finish_sent < s.finish_parts
        return Moved(s, "send-finish" if more else "done", part, result, done=not more)

    # ----- the passive party
    def _passive_take_start(self, received: Mapping[str, Artifact], salt: bytes) -> Moved:
        ctx = self.ctx
        before = ps.PassiveStream.load(self.state) if ps.PassiveStream.present(self.state) else None
        s, answer = ps.passive_take_start(
            before, _part(need(received, ctx.active, ps.START)), self.chunks, job_id=ctx.job, salt=salt,
            party=ctx.name, active=ctx.active, scratch=self.scratch, budget=self.budget, progress=ctx.progress)
        return Moved(s, "respond" if s.start_taken < s.start_parts else "send-points", answer)

    def _passive_send_points(self, s: ps.PassiveStream) -> Moved:
        s, part = ps.passive_next_points(s, self.scratch)
        return Moved(s, "send-points" if s.points_sent < s.points_parts else "wait-finish", part)

    def _passive_take_finish(self, received: Mapping[str, Artifact], salt: bytes) -> Moved:
        art = need(received, self.ctx.active, ps.FINISH)
        s, result = ps.passive_take_finish(ps.PassiveStream.load(self.state), _part(art), self.chunks,
                                           self.scratch, self.budget)
        return Moved(s, "wait-finish" if result is None else "done", None, result, done=result is not None)

    # ----- the job's result
    def _keep(self, result: ps.StreamAlignment, *, final: bool) -> None:
        """The alignment's figures at once; its arrays too if this step finishes the job, else
        into scratch until the step that does (the job state stays small in between)."""
        if final:
            Aligned(aligned_ids=result.ids, aligned_rows=np.asarray(result.rows, dtype=np.int64),
                    digest_key=result.digest_key).store(self.state)
        else:
            ps.save_result(self.scratch, result)
            Aligned(digest_key=result.digest_key).store(self.state)
        self.state.results = {"intersection_size": int(len(result.ids)), "fingerprint": result.fingerprint.hex()}

    def _done(self, s: ps.ActiveStream | ps.PassiveStream) -> None:
        """The alignment is complete: secrets and scratch files go, the result stays."""
        kept = Aligned.load(self.state)
        if kept.aligned_ids is None:  # kept in scratch since the step that computed it
            ids, rows = ps.saved_result(self.scratch, s.width)
            kept.but(aligned_ids=ids, aligned_rows=rows.astype(np.int64, copy=False)).store(self.state)
        StreamedWith({"memory_bound": self.budget.memory, "part_size": s.part_size}).store(self.state)
        ps.ActiveStream.drop(self.state)
        self.state.results = {**self.state.results, "streamed_in_parts": True}
        self.state.phase, self.state.done = "done", True
        self.scratch.remove()


_Handler = Callable[[Stream, Mapping[str, Artifact], bytes], Moved]
_ACTIVE: dict[str, _Handler] = {
    "start": Stream._active_start,
    "send-start": lambda st, r, salt: st._active_send_start(ps.ActiveStream.load(st.state)),
    "wait-responses": Stream._active_take,
    "send-finish": lambda st, r, salt: st._active_send_finish(ps.ActiveStream.load(st.state)),
}
_PASSIVE: dict[str, _Handler] = {
    "start": Stream._passive_take_start,
    "respond": Stream._passive_take_start,
    "send-points": lambda st, r, salt: st._passive_send_points(ps.PassiveStream.load(st.state)),
    "wait-finish": Stream._passive_take_finish,
}


def _send(part: ps.Part | None, to: str) -> list[Outgoing]:
    if part is None:
        return []
    members: list[Member] = [
        points_member(name, a) if name in ("points", "double_blinded") else ndarray_member(name, a)
        for name, a in part.arrays.items()
    ]
    return [Outgoing(to, part.kind, _STEPS[part.kind], members=members, meta=dict(part.meta))]


def _part(art: Artifact) -> ps.Part:
    arrays = {name: art.points(name) if m.type == "points" else art.array(name) for name, m in art.members.items()}
    return ps.Part(art.kind, dict(art.meta), arrays)
