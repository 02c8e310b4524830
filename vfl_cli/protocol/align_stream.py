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

from collections.abc import Mapping
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member, ndarray_member, points_member
from vfl_cli.protocol import psi_stream as ps
from vfl_cli.protocol.base import Expect, JobState, Outgoing, PartyContext, need

_STEPS = {ps.START: "start", ps.RESPONSE: "response", ps.FINISH: "finish"}


def streaming(ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]) -> bool:
    """Whether this job streams: decided by the active party at its first step, followed by the
    passive party from the first start part."""
    if "stream" in state.data:
        return True
    if state.phase != "start" or ctx.scratch is None:
        return False
    if ctx.is_active:
        n = _count_lines(ctx.data_file())
        return ps.choose(n, ctx.memory or ps.DEFAULT_MEMORY, len(ctx.passives))
    art = received.get(ctx.active)
    return art is not None and art.meta.get("stream") == 1


def _count_lines(path: Any) -> int:
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


class Stream:
    """One party's streamed alignment steps."""

    def __init__(self, ctx: PartyContext, state: JobState) -> None:
        assert ctx.scratch is not None
        self.ctx, self.state = ctx, state
        self.budget = ps.Budget(ctx.memory or ps.DEFAULT_MEMORY)
        self.scratch = ps.Scratch(ctx.scratch())
        self.chunks = ps.csv_chunks(ctx.data_file(), ctx.id_column, self.budget.chunk, ctx.csv)

    def advance(self, received: Mapping[str, Artifact], salt: bytes) -> list[Outgoing]:
        ctx, phase = self.ctx, self.state.phase
        s = ps.state_loaded(self.state.data.get("stream", {}))
        if ctx.is_active and phase == "start":
            s = ps.active_begin(self.chunks, job_id=ctx.job, salt=salt, party=ctx.name, scratch=self.scratch,
                                budget=self.budget, progress=ctx.progress)
            out = self._send(ps.active_next_start(s, self.scratch), ctx.passives[0])
            self._phase(s, "send-start" if s["sent"] < s["start_parts"] else "wait-responses")
        elif ctx.is_active and phase == "send-start":
            out = self._send(ps.active_next_start(s, self.scratch), ctx.passives[0])
            self._phase(s, "send-start" if s["sent"] < s["start_parts"] else "wait-responses")
        elif ctx.is_active and phase == "wait-responses":
            out = self._take_response(s, need(received, ctx.passives[0], ps.RESPONSE))
        elif ctx.is_active:  # send-finish
            out = self._send(ps.active_next_finish(s, self.scratch), ctx.passives[0])
            self._after_finish_part(s)
        elif phase in ("start", "respond"):
            part = _part(need(received, ctx.active, ps.START))
            s, answer = ps.passive_take_start(
                s or None, part, self.chunks, job_id=ctx.job, salt=salt, party=ctx.name, active=ctx.active,
                scratch=self.scratch, budget=self.budget, progress=ctx.progress)
            out = self._send(answer, ctx.active)
            self._phase(s, "respond" if s["start_taken"] < s["start_parts"] else "send-points")
        elif phase == "send-points":
            out = self._send(ps.passive_next_points(s, self.scratch), ctx.active)
            self._phase(s, "send-points" if s["points_sent"] < s["points_parts"] else "wait-finish")
        else:  # wait-finish
            result = ps.passive_take_finish(s, _part(need(received, ctx.active, ps.FINISH)), self.chunks,
                                            self.scratch, self.budget)
            out = []
            self._phase(s, "wait-finish")
            if result is not None:
                self._keep(result)
                self._done(s)
        return out

    def _take_response(self, s: dict[str, Any], art: Artifact) -> list[Outgoing]:
        if not ps.active_take(s, _part(art), self.scratch, peer=self.ctx.passives[0], progress=self.ctx.progress):
            self._phase(s, "wait-responses")
            return []
        self._keep(ps.active_conclude(s, self.chunks, self.scratch, self.budget))
        out = self._send(ps.active_next_finish(s, self.scratch), self.ctx.passives[0])
        self._after_finish_part(s)
        return out

    def _after_finish_part(self, s: dict[str, Any]) -> None:
        if s["finish_sent"] < s["finish_parts"]:
            self._phase(s, "send-finish")
        else:
            self._done(s)

    def _phase(self, s: dict[str, Any], phase: str) -> None:
        self.state.data["stream"] = ps.state_json(s)
        self.state.phase = phase

    def _keep(self, result: ps.StreamAlignment) -> None:
        self.state.arrays["aligned_ids"] = result.ids
        self.state.arrays["aligned_rows"] = np.asarray(result.rows, dtype=np.int64)
        self.state.data["digest_key"] = result.digest_key.hex()
        self.state.results = {"intersection_size": int(len(result.ids)),
                              "fingerprint": result.fingerprint.hex()}

    def _done(self, s: dict[str, Any]) -> None:
        """The alignment is complete: secrets and scratch files go, the result stays."""
        self.state.data.pop("stream", None)
        self.state.data["streamed"] = {"memory_bound": self.budget.memory, "part_size": s["part_size"]}
        self.state.results = {**self.state.results, "streamed_in_parts": True}
        self.state.phase, self.state.done = "done", True
        self.scratch.remove()

    def _send(self, part: ps.Part | None, to: str) -> list[Outgoing]:
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
